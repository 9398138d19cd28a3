"""The reaper: finds ``running`` jobs whose worker died (stale heartbeat) and requeues or ends
them, so no job stays ``running`` forever.

Why it is needed: with Celery, a job message is acknowledged late. When only the worker's pool
child dies, the worker's parent rejects the message and Redis delivers it again at once. But
when the whole worker (parent included) is killed — SIGKILL, OOM killer, a lost machine — the
unacknowledged message comes back only after the broker's ``visibility_timeout``, which is
longer than the job time limit (hours). Meanwhile the row says ``running`` and its heartbeat
stops moving. The reaper closes that gap:

- a ``running`` job whose ``heartbeat_at`` is older than ``STALE_HEARTBEATS`` heartbeat
  intervals has lost its worker (a live run refreshes it from a thread every interval);
- cancel requested → ``cancelled``; ``attempts >= MAX_ATTEMPTS`` → ``failed`` ``worker_lost``;
  otherwise the job is sent to the dispatcher again: the worker that gets the message sees the
  stale heartbeat and takes the job over (``service.jobs.state.claim_job`` → attempt + 1), or fails
  it ``timeout`` past the time limit. The late original message, when the broker restores it,
  finds a terminal (or live) job and does nothing.

Every write is a conditional UPDATE fenced on the row the reaper read (status, attempts and
heartbeat unchanged), so a reaper racing a worker that just came back, or another API replica's
reaper, changes nothing. A requeue is sent at most once per ``resend_after_s`` for one attempt.

It also sends jobs whose message may never have been sent (transactional outbox): the API
commits a job ``queued`` and then publishes its message, and marks ``enqueued_at`` once the
broker took it. A ``queued`` job without ``enqueued_at``, not cancelled, older than
``requeue_unsent_after_s`` (``GIF_REQUEUE_UNSENT_AFTER_S``) lost its message when the API died
between the two; the reaper marks it in an open transaction, sends it, then commits. A second
reaper's UPDATE waits on that row and then matches nothing, so only one sends; a send that fails
(or a reaper that dies before its commit) rolls the mark back and a later sweep sends again.

Who runs it: the API process, in a daemon thread started by the app's lifespan when the runner
is ``celery`` (``maybe_start_reaper``); every API replica may run one. The embedded local runner
needs none: it watches its child process itself and re-runs orphaned jobs when it starts."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service.background import PeriodicThread
from service.db.models import Job, utcnow
from service.dispatch import Dispatcher
from service.jobs.state import MAX_ATTEMPTS, STALE_HEARTBEATS, end_job, lost_run_outcome
from service.settings import Settings

logger = logging.getLogger(__name__)

RESEND_FACTOR = 10  # a requeued job whose message got lost again is re-sent after 10 windows


@dataclass(frozen=True)
class StaleJob:
    """What the reaper read of a ``running`` job with a stale heartbeat (its fence)."""

    job_id: str
    attempts: int
    heartbeat_at: datetime | None
    cancel_requested: bool
    started_at: datetime | None = None


@dataclass
class ReapReport:
    """What one sweep did, by job id."""

    requeued: list[str] = field(default_factory=list)
    sent_unsent: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)


def stale_running_jobs(session: Session, stale_after_s: float) -> list[StaleJob]:
    """``running`` jobs whose heartbeat is older than ``stale_after_s`` (or missing)."""
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    rows = session.execute(
        sa.select(Job.id, Job.attempts, Job.heartbeat_at, Job.cancel_requested, Job.started_at)
        .where(
            Job.status == "running",
            sa.or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff),
        )
        .order_by(Job.created_at)
    ).all()
    return [
        StaleJob(r.id, r.attempts, r.heartbeat_at, bool(r.cancel_requested), r.started_at)
        for r in rows
    ]


def unsent_queued_jobs(session: Session, older_than_s: float) -> list[str]:
    """``queued`` jobs never marked sent (``enqueued_at`` NULL) and not cancelled, created
    more than ``older_than_s`` ago (a younger one may still be in its API's hands)."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    return list(
        session.scalars(
            sa.select(Job.id)
            .where(
                Job.status == "queued",
                Job.enqueued_at.is_(None),
                Job.cancel_requested.is_(False),
                Job.created_at < cutoff,
            )
            .order_by(Job.created_at)
        )
    )


def send_unsent_job(
    factory: sessionmaker[Session], dispatcher: Dispatcher, job_id: str
) -> bool:
    """Mark ``job_id`` sent (fenced on it still being queued, unsent and not cancelled) and
    send it before committing the mark; True when this call sent it. A failed send raises
    and leaves the job unmarked for the next sweep."""
    with factory() as session:
        rows = session.execute(
            sa.update(Job)
            .where(
                Job.id == job_id,
                Job.status == "queued",
                Job.enqueued_at.is_(None),
                Job.cancel_requested.is_(False),
            )
            .values(enqueued_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount
        if rows != 1:
            session.rollback()
            return False
        dispatcher.submit(job_id)  # raises → the session closes unmarked (rolled back)
        session.commit()
    logger.warning("reaper: job %s was queued but never sent: sent now", job_id)
    return True


def _fence(job: StaleJob) -> sa.ColumnElement[bool]:
    """The row is exactly as the reaper read it: nobody took it over or finished it since."""
    seen = job.heartbeat_at
    heartbeat = Job.heartbeat_at.is_(None) if seen is None else Job.heartbeat_at == seen
    return sa.and_(Job.attempts == job.attempts, heartbeat)


def end_stale_job(
    factory: sessionmaker[Session], job: StaleJob, status: str, error: dict | None
) -> bool:
    """Move a stale ``running`` job to ``status`` (fenced); True when this call did it."""
    message = error["message"] if error else "cancelled (its worker was lost)"
    ended = end_job(factory, job.job_id, _fence(job), status, error, message=message)
    if ended:
        logger.warning("reaper: job %s %s: %s", job.job_id, status, message)
    return ended


@dataclass
class Reaper:
    """Sweeps for stale ``running`` jobs (see the module docstring). ``sweep()`` runs one pass;
    ``start()`` runs passes every ``interval_s`` in a daemon thread until ``close()``."""

    factory: sessionmaker[Session]
    dispatcher: Dispatcher
    stale_after_s: float
    interval_s: float
    max_attempts: int = MAX_ATTEMPTS
    time_limit_s: float = math.inf
    resend_after_s: float | None = None
    requeue_unsent_after_s: float = 30.0
    _sent: dict[tuple[str, int], float] = field(default_factory=dict)
    _thread: PeriodicThread | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, factory: sessionmaker[Session], dispatcher: Dispatcher
    ) -> Reaper:
        """Stale after ``STALE_HEARTBEATS`` heartbeat intervals; one sweep per interval."""
        interval = settings.heartbeat_interval_s
        return cls(
            factory,
            dispatcher,
            STALE_HEARTBEATS * interval,
            interval,
            time_limit_s=settings.job_time_limit_s,
            requeue_unsent_after_s=settings.requeue_unsent_after_s,
        )

    def sweep(self) -> ReapReport:
        """One pass: cancel, fail or requeue every stale ``running`` job, then send the
        ``queued`` jobs whose message was never sent."""
        report = ReapReport()
        self._sweep_running(report)
        self._send_unsent(report)
        return report

    def _send_unsent(self, report: ReapReport) -> None:
        with self.factory() as session:
            unsent = unsent_queued_jobs(session, self.requeue_unsent_after_s)
        for job_id in unsent:
            if send_unsent_job(self.factory, self.dispatcher, job_id):
                report.sent_unsent.append(job_id)

    def _sweep_running(self, report: ReapReport) -> None:
        with self.factory() as session:
            stale = stale_running_jobs(session, self.stale_after_s)
        resend_after = (
            RESEND_FACTOR * self.stale_after_s
            if self.resend_after_s is None
            else self.resend_after_s
        )
        now = time.monotonic()
        live_keys = {(job.job_id, job.attempts) for job in stale}
        self._sent = {key: at for key, at in self._sent.items() if key in live_keys}
        for job in stale:
            outcome = lost_run_outcome(
                cancel_requested=job.cancel_requested,
                attempts=job.attempts,
                started_at=job.started_at,
                now=utcnow(),
                time_limit_s=self.time_limit_s,
                max_attempts=self.max_attempts,
                lost_for_s=self.stale_after_s,
            )
            if outcome is not None:
                status, error = outcome
                if end_stale_job(self.factory, job, status, error):
                    (report.cancelled if status == "cancelled" else report.failed).append(
                        job.job_id
                    )
            else:
                key = (job.job_id, job.attempts)
                sent_at = self._sent.get(key)
                if sent_at is not None and now - sent_at < resend_after:
                    continue  # its requeue message is still waiting for a free worker
                self.dispatcher.submit(job.job_id)
                self._sent[key] = now
                report.requeued.append(job.job_id)
                logger.warning(
                    "reaper: job %s lost its worker (attempt %d): requeued",
                    job.job_id,
                    job.attempts,
                )

    def start(self) -> Reaper:
        self._thread = PeriodicThread("gif-reaper", self.interval_s, self.sweep).start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._thread.close(timeout)


def maybe_start_reaper(
    settings: Settings, factory: sessionmaker[Session], dispatcher: Dispatcher
) -> Reaper | None:
    """Start a reaper thread when jobs run on Celery workers (see the module docstring)."""
    if settings.effective_runner != "celery":
        return None
    return Reaper.from_settings(settings, factory, dispatcher).start()
