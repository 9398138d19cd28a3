"""The embedded default's job runner: no broker, one job at a time, in a separate process.

:class:`LocalRunner` lives inside the API process. A background thread takes job ids from an
in-memory queue and hands them, one at a time, to a child process started with the ``spawn``
method (:func:`worker.local.child_main`), which runs the very same
:func:`worker.jobs.execute_job` as the Celery worker. The child imports torch itself, so the
API process never forks with CUDA (or torch threads) initialised, and a crash or out-of-memory
kill of a job cannot take the API down.

The child is started with the runner, before any job, and warms up at once (imports, its
database connection: :func:`worker.process.warm_up`); it is kept between jobs (importing torch
and the engine costs seconds, more than a small edit; it frees its caches after each job) and
replaced after ``MAX_JOBS_PER_CHILD`` jobs it
ran, after a job that ran past the time limit (it is terminated), or when it dies. A job
already cancelled (or ended) is settled in the runner thread with one read and never reaches
the child, so a burst of cancellations neither costs a process nor counts toward its budget.
A child that dies without writing its job's terminal state
fails the job ``worker_lost`` with the exit code.

On start it scans the database: ``queued`` jobs (their submit may have been lost when the
previous process stopped) are queued again, and ``running`` jobs left by a previous process are
re-run (once; a second loss fails them ``worker_lost``). The embedded default assumes this runner
is the only one on its database."""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass
from itertools import count
from multiprocessing.connection import Connection

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from service.db.models import ACTIVE_STATUSES, Job
from service.db.session import engine_from_settings, make_session_factory
from service.jobs.state import fail_unfinished_job, needs_run, warm_up_reads
from service.settings import Settings
from worker.local import child_main

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.25
CLOSE_TIMEOUT_S = 10.0
MAX_JOBS_PER_CHILD = 50  # bounds what a leak in one job's libraries can accumulate
RETRY_MAX = 5  # a job that could not be executed (database down) is retried this many times
RETRY_DELAY_S = 5.0  # ... after 5, 10, 15, ... seconds


@dataclass(frozen=True)
class _Task:
    job_id: str
    orphaned: bool  # a `running` job whose previous process is gone: re-run it without waiting


def pending_jobs(engine: sa.Engine) -> list[_Task]:
    """Jobs a fresh runner must take over: ``queued`` ones, then ``running`` ones (orphaned),
    oldest first."""
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(Job.id, Job.status)
            .where(Job.status.in_(ACTIVE_STATUSES))
            .order_by(Job.created_at)
        ).all()
    return [_Task(job_id, orphaned=status == "running") for job_id, status in rows]


@dataclass
class _Child:
    process: multiprocessing.process.BaseProcess
    connection: Connection
    jobs_run: int = 0
    ready: bool = False  # it said it warmed up (worker.process.warm_up)


class LocalRunner:
    """Runs submitted jobs one at a time in a ``spawn`` child process (see the module
    docstring). Implements ``service.dispatch.Dispatcher``: ``submit``, ``ready``, ``close``."""

    in_process = True  # queued rows are taken over at start: a row is inserted marked sent

    def __init__(self, settings: Settings, *, scan_on_start: bool = True):
        self._settings = settings
        self._context = multiprocessing.get_context("spawn")
        self._queue: queue.Queue[_Task | None] = queue.Queue()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._child: _Child | None = None
        self._current_job_id: str | None = None
        self._retries: dict[str, int] = {}
        self._serial = count(1)
        self._worker_prefix = f"local:{socket.gethostname()}:{os.getpid()}"
        self._scan_on_start = scan_on_start
        self._engine = engine_from_settings(settings)
        self._factory = make_session_factory(self._engine)
        self.handed_over = 0  # jobs given to a job process (cancelled ones never are)
        self._thread = threading.Thread(target=self._loop, name="gif-local-runner", daemon=True)
        self._thread.start()

    # -- Dispatcher protocol -------------------------------------------------------------
    def submit(self, job_id: str) -> None:
        """Queue ``job_id`` (the job row is already committed as ``queued``)."""
        if self._stopping.is_set():
            raise RuntimeError("the local runner is closed")
        self._queue.put(_Task(job_id, orphaned=False))

    def ready(self) -> bool:
        """True while the runner thread is alive (it has no broker to check)."""
        return self._thread.is_alive() and not self._stopping.is_set()

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Stop taking jobs, terminate the child (a job it was running stays ``running`` and is
        re-run by the next runner that starts on this database), and join the thread."""
        self._stopping.set()
        self._queue.put(None)
        with self._lock:
            child = self._child
        if child is not None and child.process.is_alive():
            child.process.terminate()
        self._thread.join(timeout)
        if child is not None:
            child.process.join(timeout)

    @property
    def job_process_pid(self) -> int | None:
        """The pid of the live job process, if any (it outlives jobs)."""
        with self._lock:
            child = self._child
        return child.process.pid if child is not None and child.process.is_alive() else None

    @property
    def job_process_ready(self) -> bool:
        """Whether the live job process said it warmed up (worker.process.warm_up)."""
        with self._lock:
            child = self._child
        return child is not None and child.ready and child.process.is_alive()

    @property
    def running_job(self) -> tuple[str, int] | None:
        """``(job_id, pid)`` of the job running now and its process, if any (for operators'
        diagnostics and fault-injection tests)."""
        with self._lock:
            child, job_id = self._child, self._current_job_id
        if child is None or job_id is None or not child.process.is_alive():
            return None
        return job_id, child.process.pid

    # -- the runner thread ---------------------------------------------------------------
    def _loop(self) -> None:
        if self._scan_on_start:
            try:
                for task in pending_jobs(self._engine):
                    self._queue.put(task)
            except Exception:  # the database may be briefly unavailable: submits still work
                logger.exception("local runner: could not scan the database for pending jobs")
        with contextlib.suppress(SQLAlchemyError):  # the first cancelled job's read, warm
            warm_up_reads(self._factory)
        try:
            child = self._child_for_next_job()  # warm up before the first job arrives
            if child is not None:
                self._wait_until_ready(child)
        except Exception:
            logger.exception("local runner: could not start its job process")
        while not self._stopping.is_set():
            task = self._queue.get()
            if task is None or self._stopping.is_set():
                break
            try:
                self._run_one(task)
            except Exception:  # never let one job kill the runner thread
                logger.exception("local runner: job %s could not be run", task.job_id)
        self._stop_child()
        self._engine.dispose()

    def _child_for_next_job(self) -> _Child | None:
        """The live child, or a new one (None once stopping)."""
        with self._lock:
            child = self._child
            usable = child is not None and child.process.is_alive()
            if usable and child.jobs_run < MAX_JOBS_PER_CHILD:
                return child
        if child is not None:
            self._stop_child()
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(
            target=child_main,
            args=(self._settings, child_end),
            name="gif-job-runner",
            daemon=True,
        )
        with self._lock:
            if self._stopping.is_set():
                return None
            process.start()
            self._child = _Child(process, parent_end)
        child_end.close()
        logger.info("local runner: job process %s started", process.pid)
        return self._child

    def _wait_until_ready(self, child: _Child) -> None:
        """Wait for the first child's ``ready`` (its warm-up is done) before the first job, so
        the runner knows its process is warm (:attr:`job_process_ready`); a child that dies
        meanwhile is replaced at the first hand-over."""
        while not self._stopping.is_set() and child.process.is_alive():
            try:
                if child.connection.poll(POLL_INTERVAL_S):
                    kind, _ = child.connection.recv()
                    child.ready = child.ready or kind == "ready"
                    return
            except (EOFError, OSError):
                return

    def _stop_child(self, *, kill: bool = False) -> None:
        """Let the child exit after its current job (``kill``: terminate it now)."""
        with self._lock:
            child, self._child = self._child, None
        if child is None:
            return
        if child.process.is_alive() and not kill:
            with contextlib.suppress(BrokenPipeError, OSError):
                child.connection.send(None)  # ask it to exit after its current job
            child.process.join(CLOSE_TIMEOUT_S)
        if child.process.is_alive():
            child.process.terminate()
            child.process.join(CLOSE_TIMEOUT_S)
        child.connection.close()

    def _hand_over(self, task: _Task) -> tuple[_Child, str] | None:
        """Send ``task`` to a live child (a fresh one if the current one just died)."""
        for _ in range(2):
            child = self._child_for_next_job()
            if child is None:
                return None
            worker_id = f"{self._worker_prefix}:{child.process.pid}:{next(self._serial)}"
            try:
                child.connection.send((task.job_id, worker_id, task.orphaned))
            except (BrokenPipeError, OSError):
                self._stop_child()
                continue
            child.jobs_run += 1
            self.handed_over += 1
            return child, worker_id
        logger.error("local runner: no job process could take job %s", task.job_id)
        return None

    def _needs_process(self, task: _Task) -> bool:
        """A job already cancelled (or finished) is settled here, in the runner thread: it
        costs one read, no job process and no place in the child's ``MAX_JOBS_PER_CHILD``."""
        if task.orphaned:
            return True
        try:
            return needs_run(self._factory, task.job_id)
        except SQLAlchemyError:  # the database is unreachable: the child's retry path decides
            return True

    def _run_one(self, task: _Task) -> None:
        if not self._needs_process(task):
            logger.info("local runner: job %s needs no run (cancelled or ended)", task.job_id)
            return
        with self._lock:
            self._current_job_id = task.job_id
        try:
            handed = self._hand_over(task)
            if handed is None:
                return
            child, worker_id = handed
            outcome = self._await_outcome(child)
        finally:
            with self._lock:
                self._current_job_id = None
        if self._stopping.is_set():
            return  # terminated by close(): the next runner re-runs the job
        if outcome == "timeout":
            self._stop_child(kill=True)
            limit = self._settings.job_time_limit_s
            message = f"the job ran past its time limit ({limit:g} s)"
            fail_unfinished_job(
                task.job_id, self._settings, code="timeout", message=message, worker_id=worker_id
            )
        elif outcome == "died":
            code = child.process.exitcode
            reason = (
                f"killed by signal {-code}"
                if code is not None and code < 0
                else (f"exit code {code}")
            )
            self._stop_child()
            fail_unfinished_job(
                task.job_id,
                self._settings,
                code="worker_lost",
                message=f"the job's process ended without finishing it ({reason})",
                worker_id=worker_id,
            )
        elif outcome.startswith("error:"):
            self._retry_later(task, outcome.removeprefix("error:"), worker_id)

    def _retry_later(self, task: _Task, error: str, worker_id: str) -> None:
        """The job could not be executed at all (its database was unreachable, say): try it
        again in a while, a few times, then fail it if it is still ours."""
        tries = self._retries.get(task.job_id, 0) + 1
        self._retries[task.job_id] = tries
        if tries <= RETRY_MAX:
            logger.warning("local runner: job %s will be retried (%s)", task.job_id, error)
            timer = threading.Timer(RETRY_DELAY_S * tries, self._queue.put, args=(task,))
            timer.daemon = True
            timer.start()
            return
        fail_unfinished_job(
            task.job_id,
            self._settings,
            code="internal_error",
            message=f"internal error ({error})",
            worker_id=worker_id,
        )

    def _await_outcome(self, child: _Child) -> str:
        """Wait for the child's answer: ``done``, ``error:<message>``, ``died`` or
        ``timeout`` (past ``job_time_limit_s``; the caller terminates the child)."""
        deadline = math.inf  # set when the child starts the job (it may still be loading)
        while not self._stopping.is_set():
            try:
                if child.connection.poll(POLL_INTERVAL_S):
                    kind, detail = child.connection.recv()
                    if kind == "ready":  # warmed up (sent once, before its first job)
                        child.ready = True
                        continue
                    if kind == "started":
                        deadline = time.monotonic() + self._settings.job_time_limit_s
                        continue
                    return "done" if kind == "done" else f"error:{detail}"
            except (EOFError, OSError):
                child.process.join(CLOSE_TIMEOUT_S)
                return "died"
            if not child.process.is_alive():
                return "died"
            if time.monotonic() >= deadline:
                return "timeout"
        return "stopping"
