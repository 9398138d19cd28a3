"""The job row's state machine as the worker drives it: claim, heartbeat, progress, events,
terminal transitions. Database only (no torch), so the API-side runners can use it too.

``queued → running → succeeded | failed | cancelled``; terminal states never change. Every
transition is a conditional UPDATE whose row count is checked. A claim increments ``attempts``,
and every later write of that run is fenced by ``status='running' AND attempts=<its attempt>``:
a run that lost its job (a redelivery re-ran it after a heartbeat went stale) can no longer
write progress, a result or a terminal state."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import TERMINAL_STATUSES, Job, JobEvent, utcnow
from service.db.session import engine_from_settings
from service.settings import Settings

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 2  # a job whose worker died is re-run once; a second loss fails it worker_lost
STALE_HEARTBEATS = 3  # a running job is orphaned after this many missed heartbeats
MAX_EVENTS_PER_JOB = 2000  # a runaway event source must not fill the database
EVENT_SEQ_ATTEMPTS = 50  # racing writers of one job's events retry this often before dropping one


@dataclass(frozen=True)
class Claim:
    """This run's hold on a job: ``attempt`` is the fencing token of every later write."""

    job_id: str
    attempt: int
    worker_id: str
    owner_id: str
    model_id: str
    train_dataset_id: str
    request: dict[str, Any]


@dataclass(frozen=True)
class JobSignal:
    """What a running job learns from its row: whether it still holds it, and whether the user
    asked it to stop."""

    owned: bool
    cancel_requested: bool

    @property
    def should_stop(self) -> bool:
        return not self.owned or self.cancel_requested


def _fence(claim: Claim) -> sa.ColumnElement[bool]:
    return sa.and_(Job.id == claim.job_id, Job.status == "running", Job.attempts == claim.attempt)


def _claim_from_row(job: Job, worker_id: str, attempt: int) -> Claim:
    return Claim(
        job_id=job.id,
        attempt=attempt,
        worker_id=worker_id,
        owner_id=job.owner_id,
        model_id=job.model_id,
        train_dataset_id=job.train_dataset_id,
        request=dict(job.request),
    )


def _terminal_values(status: str, error: dict | None, now: datetime) -> dict[str, Any]:
    values: dict[str, Any] = {"status": status, "finished_at": now, "heartbeat_at": now}
    if error is not None:
        values["error"] = error
    return values


def cancel_queued(session: Session, job_id: str) -> bool:
    """``queued → cancelled`` (a cancel that arrived before the job started)."""
    now = utcnow()
    rows = session.execute(
        sa.update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(_terminal_values("cancelled", None, now))
        .execution_options(synchronize_session=False)
    ).rowcount
    session.commit()
    return rows == 1


def _wait_for_stale_heartbeat(
    factory: sessionmaker[Session], job_id: str, seen: datetime | None, stale_after_s: float
) -> bool:
    """Watch a ``running`` job for ``stale_after_s``: True when its heartbeat did not move (its
    worker is gone), False when it moved or the job changed state (someone is running it)."""
    deadline = time.monotonic() + stale_after_s
    if seen is not None:
        # A heartbeat older than the stale window already proves the worker gone.
        deadline = min(deadline, time.monotonic() + max(0.0, _age_limit(seen, stale_after_s)))
    while time.monotonic() < deadline:
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        with factory() as session:
            row = session.execute(
                sa.select(Job.status, Job.heartbeat_at).where(Job.id == job_id)
            ).one_or_none()
        if row is None or row.status != "running" or row.heartbeat_at != seen:
            return False
    return True


def _age_limit(seen: datetime, stale_after_s: float) -> float:
    """Seconds left until a heartbeat written at ``seen`` is stale."""
    return stale_after_s - (utcnow() - seen).total_seconds()


def claim_job(
    factory: sessionmaker[Session],
    job_id: str,
    worker_id: str,
    *,
    orphaned: bool,
    stale_after_s: float,
    time_limit_s: float,
) -> Claim | None:
    """Take ``job_id`` for this run, or decide it needs no run (returns None).

    - missing or terminal → None (a redelivered message for a finished job does nothing);
    - ``queued`` with ``cancel_requested`` → ``cancelled``;
    - ``queued`` → ``running`` (attempts+1, worker_id, started_at, heartbeat_at);
    - ``running`` (a redelivery, or a job left by a stopped process): unless ``orphaned`` is
      known, wait until its heartbeat is stale, so a live run is never duplicated; then cancel
      it if asked, fail it ``timeout`` past the time limit or ``worker_lost`` after
      ``MAX_ATTEMPTS`` runs, else re-run it (attempts+1)."""
    with factory() as session:
        job = session.get(Job, job_id)
        if job is None:
            logger.warning("job %s does not exist: nothing to run", job_id)
            return None
        if job.status in TERMINAL_STATUSES:
            logger.info("job %s is already %s: nothing to run", job_id, job.status)
            return None
        if job.status == "queued":
            if job.cancel_requested:
                cancel_queued(session, job_id)
                return None
            now, attempt = utcnow(), job.attempts + 1
            claim = _claim_from_row(job, worker_id, attempt)
            rows = session.execute(
                sa.update(Job)
                .where(Job.id == job_id, Job.status == "queued")
                .values(
                    status="running",
                    attempts=Job.attempts + 1,
                    worker_id=worker_id,
                    heartbeat_at=now,
                    started_at=sa.func.coalesce(Job.started_at, now),
                )
                .execution_options(synchronize_session=False)
            ).rowcount
            session.commit()
            if rows != 1:
                return None  # another worker claimed it first
            return claim
        seen_heartbeat, seen_attempts = job.heartbeat_at, job.attempts
    if not orphaned and not _wait_for_stale_heartbeat(
        factory, job_id, seen_heartbeat, stale_after_s
    ):
        logger.info("job %s is running elsewhere (live heartbeat): not run again", job_id)
        return None
    return _reclaim(factory, job_id, worker_id, seen_attempts, time_limit_s)


def _reclaim(
    factory: sessionmaker[Session],
    job_id: str,
    worker_id: str,
    seen_attempts: int,
    time_limit_s: float,
) -> Claim | None:
    """Take over a ``running`` job whose worker is gone (see :func:`claim_job`)."""
    with factory() as session:
        job = session.get(Job, job_id)
        if job is None or job.status != "running" or job.attempts != seen_attempts:
            return None
        now = utcnow()
        fence = sa.and_(Job.id == job_id, Job.status == "running", Job.attempts == seen_attempts)
        started = job.started_at or now
        if job.cancel_requested:
            outcome, error = "cancelled", None
        elif now - started >= timedelta(seconds=time_limit_s):
            outcome = "failed"
            error = {
                "code": "timeout",
                "message": f"the job ran past its time limit "
                f"({time_limit_s:g} s) and its worker was lost",
            }
        elif job.attempts >= MAX_ATTEMPTS:
            outcome = "failed"
            error = {
                "code": "worker_lost",
                "message": f"the worker running the job was lost "
                f"{job.attempts} times (e.g. killed for memory or restarted)",
            }
        else:
            claim = _claim_from_row(job, worker_id, seen_attempts + 1)
            rows = session.execute(
                sa.update(Job)
                .where(fence)
                .values(attempts=Job.attempts + 1, worker_id=worker_id, heartbeat_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount
            session.commit()
            if rows != 1:
                return None
            append_event(
                factory,
                job_id,
                "warning",
                "load",
                f"the previous worker was lost; re-running (attempt {seen_attempts + 1})",
                {"attempt": seen_attempts + 1},
            )
            return claim
        rows = session.execute(
            sa.update(Job)
            .where(fence)
            .values(_terminal_values(outcome, error, now))
            .execution_options(synchronize_session=False)
        ).rowcount
        session.commit()
    if rows == 1:
        append_event(
            factory,
            job_id,
            "error" if error else "info",
            None,
            error["message"] if error else "cancelled",
            error or {},
        )
    return None


def poll_signal(factory: sessionmaker[Session], claim: Claim, *, heartbeat: bool) -> JobSignal:
    """Read (and with ``heartbeat`` refresh) the job row: still ours? cancel requested?"""
    with factory() as session:
        if heartbeat:
            session.execute(
                sa.update(Job)
                .where(_fence(claim))
                .values(heartbeat_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            session.commit()
        row = session.execute(
            sa.select(Job.status, Job.attempts, Job.cancel_requested).where(Job.id == claim.job_id)
        ).one_or_none()
    if row is None:
        return JobSignal(owned=False, cancel_requested=False)
    owned = row.status == "running" and row.attempts == claim.attempt
    return JobSignal(owned=owned, cancel_requested=bool(row.cancel_requested))


def write_progress(factory: sessionmaker[Session], claim: Claim, progress: dict) -> bool:
    """Store the job's ``progress`` (and refresh its heartbeat); False if no longer ours."""
    with factory() as session:
        rows = session.execute(
            sa.update(Job)
            .where(_fence(claim))
            .values(progress=progress, heartbeat_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount
        session.commit()
    return rows == 1


def append_event(
    factory: sessionmaker[Session],
    job_id: str,
    level: str,
    phase: str | None,
    message: str,
    data: dict | None = None,
) -> int | None:
    """Append one event with the next ``seq`` of the job; returns the seq (None if dropped).

    ``(job_id, seq)`` is unique, so two writers racing for a seq cannot both win: the loser
    retries with the next number, after a short random pause so racing writers spread out
    instead of colliding again in lockstep."""
    for attempt in range(EVENT_SEQ_ATTEMPTS):
        if attempt:
            time.sleep(random.uniform(0.0, 0.002 * attempt))
        with factory() as session:
            last = session.scalar(
                sa.select(sa.func.max(JobEvent.seq)).where(JobEvent.job_id == job_id)
            )
            seq = (last or 0) + 1
            if seq > MAX_EVENTS_PER_JOB:
                return None
            session.add(
                JobEvent(
                    job_id=job_id,
                    seq=seq,
                    at=utcnow(),
                    level=level,
                    phase=phase,
                    message=message[:2000],
                    data=data or {},
                )
            )
            try:
                session.commit()
                return seq
            except IntegrityError:
                session.rollback()
    logger.warning("job %s: event dropped after repeated seq conflicts: %s", job_id, message)
    return None


def finish_job(
    factory: sessionmaker[Session], claim: Claim, status: str, error: dict | None = None
) -> bool:
    """``running → failed | cancelled`` for this run; False when the job is no longer ours."""
    assert status in ("failed", "cancelled")
    with factory() as session:
        rows = session.execute(
            sa.update(Job)
            .where(_fence(claim))
            .values(_terminal_values(status, error, utcnow()))
            .execution_options(synchronize_session=False)
        ).rowcount
        session.commit()
    return rows == 1


def commit_success(
    factory: sessionmaker[Session],
    claim: Claim,
    result: dict,
    add_rows: Callable[[Session], None],
) -> bool:
    """In ONE transaction: ``running → succeeded`` with ``result`` (fenced), plus the rows
    ``add_rows`` adds (artifact, edited model, metrics). If the job is no longer ours, or an
    edited model already exists for it (``models.source_job_id`` is unique), nothing is
    written and False is returned: a job never succeeds twice."""
    now = utcnow()
    with factory() as session:
        try:
            rows = session.execute(
                sa.update(Job)
                .where(_fence(claim))
                .values(
                    status="succeeded",
                    result=result,
                    edited_model_id=result.get("edited_model_id"),
                    finished_at=now,
                    heartbeat_at=now,
                )
                .execution_options(synchronize_session=False)
            ).rowcount
            if rows != 1:
                session.rollback()
                return False
            add_rows(session)
            session.commit()
            return True
        except IntegrityError:
            session.rollback()
            logger.warning("job %s already has an edited model: not stored twice", claim.job_id)
            return False


def fail_unfinished_job(
    job_id: str, settings: Settings, *, code: str, message: str, worker_id: str | None = None
) -> bool:
    """Fail a job still ``running`` (optionally only if ``worker_id`` holds it) with ``code``:
    used by the runners when a run ended without writing its outcome (its process was killed,
    or Celery's hard time limit fired). Returns whether the job was failed."""
    engine = engine_from_settings(settings)
    factory = sessionmaker(engine, expire_on_commit=False)
    try:
        condition = sa.and_(Job.id == job_id, Job.status == "running")
        if worker_id is not None:
            condition = sa.and_(condition, Job.worker_id == worker_id)
        now = utcnow()
        with factory() as session:
            rows = session.execute(
                sa.update(Job)
                .where(condition)
                .values(_terminal_values("failed", {"code": code, "message": message}, now))
                .execution_options(synchronize_session=False)
            ).rowcount
            session.commit()
        if rows == 1:
            append_event(factory, job_id, "error", None, message, {"code": code})
            logger.error("job %s failed %s: %s", job_id, code, message)
        return rows == 1
    finally:
        engine.dispose()
