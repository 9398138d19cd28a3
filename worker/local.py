"""The embedded default's job runner: no broker, one job at a time, each in a fresh process.

:class:`LocalRunner` lives inside the API process. A background thread takes job ids from an
in-memory queue and runs the very same :func:`worker.jobs.execute_job` as the Celery worker, in a
child process started with the ``spawn`` method: the child imports torch itself, so the API
process never forks with CUDA (or torch threads) initialised, a crash or out-of-memory kill of a
job cannot take the API down, and a running job can be stopped by terminating its child.

On start it scans the database: ``queued`` jobs (their submit may have been lost when the
previous process stopped) are queued again, and ``running`` jobs left by a previous process are
re-run (once; a second loss fails them ``worker_lost``). The embedded default assumes this runner
is the only one on its database. A child that exits without writing a terminal state fails its
job ``worker_lost`` with the exit code."""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import socket
import threading
from dataclasses import dataclass
from itertools import count

import sqlalchemy as sa

from service.db.models import Job
from service.db.session import engine_from_settings
from service.settings import Settings
from worker.state import fail_unfinished_job

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.25
CLOSE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class _Task:
    job_id: str
    orphaned: bool  # a `running` job whose previous process is gone: re-run it without waiting


def _run_in_child(job_id: str, settings: Settings, worker_id: str, orphaned: bool) -> None:
    """The child process's body (module level: ``spawn`` pickles a reference to it)."""
    from service.observability import configure_logging
    from worker.jobs import execute_job  # torch is imported here, in the child only

    configure_logging(settings.log_level)

    execute_job(job_id, settings, worker_id=worker_id, orphaned=orphaned)


def pending_jobs(settings: Settings) -> list[_Task]:
    """Jobs a fresh runner must take over: ``queued`` ones, then ``running`` ones (orphaned),
    oldest first."""
    engine = engine_from_settings(settings)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(Job.id, Job.status)
                .where(Job.status.in_(("queued", "running")))
                .order_by(Job.created_at)
            ).all()
    finally:
        engine.dispose()
    return [_Task(job_id, orphaned=status == "running") for job_id, status in rows]


class LocalRunner:
    """Runs submitted jobs one at a time in ``spawn`` child processes (see the module docstring).

    Implements ``service.dispatch.Dispatcher``: ``submit``, ``ready``, ``close``."""

    def __init__(self, settings: Settings, *, scan_on_start: bool = True):
        self._settings = settings
        self._context = multiprocessing.get_context("spawn")
        self._queue: queue.Queue[_Task | None] = queue.Queue()
        self._stopping = threading.Event()
        self._child_lock = threading.Lock()
        self._child: multiprocessing.process.BaseProcess | None = None
        self._child_job_id = ""
        self._serial = count(1)
        self._worker_prefix = f"local:{socket.gethostname()}:{os.getpid()}"
        self._scan_on_start = scan_on_start
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
        """Stop taking jobs, terminate a running child (its job stays ``running`` and is re-run
        by the next runner that starts on this database), and join the thread."""
        self._stopping.set()
        self._queue.put(None)
        with self._child_lock:
            child = self._child
        if child is not None and child.is_alive():
            child.terminate()
        self._thread.join(timeout)

    @property
    def running_job(self) -> tuple[str, int] | None:
        """``(job_id, pid)`` of the job's child process running now, if any (for operators'
        diagnostics and fault-injection tests)."""
        with self._child_lock:
            child, job_id = self._child, self._child_job_id
        if child is None or child.pid is None or not child.is_alive():
            return None
        return job_id, child.pid

    # -- the runner thread ---------------------------------------------------------------
    def _loop(self) -> None:
        if self._scan_on_start:
            try:
                for task in pending_jobs(self._settings):
                    self._queue.put(task)
            except Exception:  # the database may be briefly unavailable: submits still work
                logger.exception("local runner: could not scan the database for pending jobs")
        while not self._stopping.is_set():
            task = self._queue.get()
            if task is None or self._stopping.is_set():
                break
            try:
                self._run_one(task)
            except Exception:  # never let one job kill the runner thread
                logger.exception("local runner: job %s could not be run", task.job_id)

    def _run_one(self, task: _Task) -> None:
        worker_id = f"{self._worker_prefix}:{next(self._serial)}"
        child = self._context.Process(
            target=_run_in_child,
            args=(task.job_id, self._settings, worker_id, task.orphaned),
            name=f"gif-job-{task.job_id}",
            daemon=True,
        )
        with self._child_lock:
            if self._stopping.is_set():
                return
            child.start()
            self._child, self._child_job_id = child, task.job_id
        logger.info("local runner: job %s started in process %s", task.job_id, child.pid)
        child.join(self._settings.job_time_limit_s)
        timed_out = child.is_alive()
        if timed_out:
            child.terminate()
            child.join()
        with self._child_lock:
            self._child = None
        if self._stopping.is_set():
            return  # terminated by close(): the next runner re-runs the job
        if timed_out:
            limit = self._settings.job_time_limit_s
            fail_unfinished_job(
                task.job_id,
                self._settings,
                code="timeout",
                message=f"the job ran past its time limit ({limit:g} s)",
                worker_id=worker_id,
            )
        elif child.exitcode != 0:
            reason = (
                f"killed by signal {-child.exitcode}"
                if child.exitcode is not None and child.exitcode < 0
                else f"exit code {child.exitcode}"
            )
            fail_unfinished_job(
                task.job_id,
                self._settings,
                code="worker_lost",
                message=f"the job's process ended without finishing it ({reason})",
                worker_id=worker_id,
            )
