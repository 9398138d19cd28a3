"""The job row's state machine: claim, heartbeat, progress, terminal writes, cancel, the
``enqueued_at`` mark. Database only (no torch): the API, the runners and the workers use it.

``queued → running → succeeded | failed | cancelled``; terminal states never change. Every
transition is a conditional UPDATE whose row count is checked. A claim increments ``attempts``,
and every later write of that run is fenced by ``status='running' AND attempts=<its attempt>``:
a run that lost its job (a redelivery re-ran it after a heartbeat went stale) can no longer
write progress, a result or a terminal state.

Two functions hold the rules that used to be repeated: :func:`cancel_job` (the one cancel, for
the API and the claim path) and :func:`end_job` (the one terminal write of a run that did not
succeed, for the worker, the runners, the claim path and the reaper); :func:`lost_run_outcome`
decides what becomes of a ``running`` job whose worker is gone (for the claim path and the
reaper)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import (
    TERMINAL_STATUSES,
    Job,
    JobEvent,
    Metric,
    Model,
    WebhookDelivery,
    WebhookSubscription,
    utcnow,
)
from service.db.session import engine_from_settings
from service.erasure import erased_input, input_deleted_error
from service.jobs.events import add_event, append_event, seq_conflict_pause
from service.settings import Settings

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 2  # a job whose worker died is re-run once; a second loss fails it worker_lost
STALE_HEARTBEATS = 3  # a running job is orphaned after this many missed heartbeats
SUCCESS_ATTEMPTS = 5  # a success whose event lost its seq to another writer is committed again


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

    @property
    def inputs(self) -> dict[str, Any]:
        """The request with the job's model and train set ids (what ``job_inputs`` reads)."""
        return {**self.request, "model_id": self.model_id,
                "train_dataset_id": self.train_dataset_id}


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


def _update(session: Session, condition: sa.ColumnElement[bool], values: dict) -> int:
    """A conditional UPDATE of job rows; the number of rows it changed."""
    return session.execute(
        sa.update(Job)
        .where(condition)
        .values(values)
        .execution_options(synchronize_session=False)
    ).rowcount


def _event_after_commit(
    factory: sessionmaker[Session], job_id: str, level: str, phase: str | None, message: str,
    data: dict | None,
) -> None:
    """The event of a transition already committed: best effort (a database hiccup here must
    not undo or repeat the transition)."""
    try:
        append_event(factory, job_id, level, phase, message, data)
    except SQLAlchemyError:
        logger.warning("job %s: event not written: %s", job_id, message, exc_info=True)


# ------------------------------------------------------------------ erase


def erase_job_row(session: Session, job_id: str, now: datetime) -> bool:
    """In the caller's transaction: a terminal job's request (the forgotten indices), result,
    progress, metadata, events, metrics and webhook deliveries (their bodies echo the
    metadata) go; the row stays as a tombstone (``deleted_at``) so the
    edited model's ``source_job_id`` still resolves. False when the job is not terminal (or
    already erased). Called by ``service.erasure`` only, with its erasure record."""
    rows = _update(
        session,
        sa.and_(Job.id == job_id, Job.deleted_at.is_(None), Job.status.in_(TERMINAL_STATUSES)),
        {"deleted_at": now, "request": {}, "request_hash": "", "idempotency_key": None,
         "result": None, "progress": None, "job_metadata": None, "edit_summary": None},
    )
    if rows != 1:
        return False
    session.execute(sa.delete(JobEvent).where(JobEvent.job_id == job_id))
    session.execute(sa.delete(Metric).where(Metric.job_id == job_id))
    session.execute(sa.delete(WebhookDelivery).where(WebhookDelivery.job_id == job_id))
    session.execute(sa.delete(WebhookSubscription).where(WebhookSubscription.job_id == job_id))
    return True


# ------------------------------------------------------------------ cancel


def cancel_job(factory: sessionmaker[Session], job_id: str) -> bool:
    """THE cancel (docs/api.md ``POST /v1/jobs/{id}/cancel``; also the claim path's, for a
    queued job already flagged): a ``queued`` job becomes ``cancelled`` at once (with an event); a
    ``running`` one gets ``cancel_requested`` and its run stops at its next check (or, if its
    worker is gone, the claim path or the reaper ends it ``cancelled``); a terminal job is left
    unchanged. Conditional UPDATEs make it safe against a worker racing to start the job.
    Returns whether this call moved the job to ``cancelled``."""
    now = utcnow()
    with factory() as session:
        became_cancelled = _update(
            session,
            sa.and_(Job.id == job_id, Job.status == "queued"),
            {**_terminal_values("cancelled", None, now), "cancel_requested": True},
        )
        if not became_cancelled:
            _update(
                session,
                sa.and_(Job.id == job_id, Job.status == "running"),
                {"cancel_requested": True},
            )
        session.commit()
    if became_cancelled:
        _event_after_commit(factory, job_id, "info", None, "cancelled before it started", None)
    return bool(became_cancelled)


# ------------------------------------------------------------------ terminal writes


def end_job(
    factory: sessionmaker[Session],
    job_id: str,
    fence: sa.ColumnElement[bool],
    status: str,
    error: dict | None,
    *,
    message: str | None = None,
    phase: str | None = None,
    data: dict | None = None,
) -> bool:
    """THE terminal write of a run that did not succeed: the row matching ``condition`` (a
    fence: the run's claim, the row as the reaper read it, a worker id) becomes ``status``
    (``failed`` with ``error``, or ``cancelled``) if it is still ``running``, then one event
    says why. True when this
    call ended the job (the event is only written then)."""
    assert status in ("failed", "cancelled")
    condition = sa.and_(Job.id == job_id, Job.status == "running", fence)
    with factory() as session:
        rows = _update(session, condition, _terminal_values(status, error, utcnow()))
        session.commit()
    if rows != 1:
        return False
    text = message or (error or {}).get("message") or status
    level = "error" if status == "failed" else "info"
    _event_after_commit(
        factory, job_id, level, phase, text, {"status": status, **(error or {}), **(data or {})}
    )
    return True


def finish_job(
    factory: sessionmaker[Session],
    claim: Claim,
    status: str,
    error: dict | None = None,
    *,
    message: str | None = None,
    phase: str | None = None,
) -> bool:
    """``running → failed | cancelled`` for this run; False when the job is no longer ours."""
    return end_job(
        factory, claim.job_id, _fence(claim), status, error, message=message, phase=phase
    )


def fail_unfinished_job(
    job_id: str, settings: Settings, *, code: str, message: str, worker_id: str | None = None
) -> bool:
    """Fail a job still ``running`` (optionally only if ``worker_id`` holds it) with ``code``:
    used by the runners when a run ended without writing its outcome (its process was killed,
    or Celery's hard time limit fired). Returns whether the job was failed."""
    engine = engine_from_settings(settings)
    factory = sessionmaker(engine, expire_on_commit=False)
    try:
        fence = sa.true() if worker_id is None else Job.worker_id == worker_id
        failed = end_job(factory, job_id, fence, "failed", {"code": code, "message": message})
        if failed:
            logger.error("job %s failed %s: %s", job_id, code, message)
        return failed
    finally:
        engine.dispose()


def commit_success(
    factory: sessionmaker[Session],
    claim: Claim,
    result: dict,
    add_rows: Callable[[Session], None],
    event: tuple[str, str | None, str, dict | None] | None = None,
) -> bool:
    """In ONE transaction: ``running → succeeded`` with ``result`` (fenced), plus the rows
    ``add_rows`` adds (artifact, edited model, metrics) and ``event`` (``level, phase, message,
    data``), so that whoever sees the job succeeded also sees its last event (a live event
    stream ends at the terminal status). If the job is no longer ours, or an edited model
    already exists for it (``models.source_job_id`` is unique), nothing is written and False
    is returned: a job never succeeds twice. A lost race for the event's ``seq`` (another
    writer's event of this job) repeats the transaction."""
    for attempt in range(SUCCESS_ATTEMPTS):
        if attempt:
            seq_conflict_pause(attempt)
        now = utcnow()
        with factory() as session:
            try:
                rows = _update(
                    session,
                    _fence(claim),
                    {
                        "status": "succeeded",
                        "result": result,
                        "edited_model_id": result.get("edited_model_id"),
                        "finished_at": now,
                        "heartbeat_at": now,
                    },
                )
                if rows != 1:
                    session.rollback()
                    return False
                add_rows(session)
                if event is not None:
                    session.flush()  # the rows' own conflicts surface before the event's
                    add_event(session, claim.job_id, *event)
                session.commit()
                return True
            except IntegrityError:
                session.rollback()
                if event is None or _has_edited_model(session, claim.job_id):
                    logger.warning(
                        "job %s already has an edited model: not stored twice", claim.job_id
                    )
                    return False
    logger.warning("job %s: its success lost every race for an event seq", claim.job_id)
    return False


def _has_edited_model(session: Session, job_id: str) -> bool:
    return session.scalar(sa.select(Model.id).where(Model.source_job_id == job_id)) is not None


# ------------------------------------------------------------------ lost runs


def lost_run_outcome(
    *,
    cancel_requested: bool,
    attempts: int,
    started_at: datetime | None,
    now: datetime,
    time_limit_s: float = math.inf,
    max_attempts: int = MAX_ATTEMPTS,
    lost_for_s: float | None = None,
) -> tuple[str, dict | None] | None:
    """What becomes of a ``running`` job whose worker is gone: ``(status, error)`` to end it
    with — cancel requested → ``cancelled``; past the time limit → ``failed timeout``; lost
    ``max_attempts`` times → ``failed worker_lost`` — or None: run it again."""
    if cancel_requested:
        return "cancelled", None
    ran_s = (now - started_at).total_seconds() if started_at is not None else 0.0
    if ran_s >= time_limit_s:
        return "failed", {
            "code": "timeout",
            "message": f"the job ran past its time limit ({time_limit_s:g} s) "
            "and its worker was lost",
        }
    if attempts >= max_attempts:
        silent = f"; no heartbeat for {lost_for_s:g} s" if lost_for_s is not None else ""
        return "failed", {
            "code": "worker_lost",
            "message": f"the worker running the job was lost {attempts} times "
            f"(e.g. killed for memory or restarted){silent}",
        }
    return None


# ------------------------------------------------------------------ claims


# An id no job has (ids are ``job_`` + 24 hex digits): a runner's warm-up asks ``needs_run``
# about it to open its connection and compile the read before the first real message.
WARM_UP_JOB_ID = "job_warm-up"


def warm_up_reads(factory: sessionmaker[Session]) -> None:
    """Open a connection and run, once, the reads a message's first moments make (the
    cancelled-message check, the claim's row load) on :data:`WARM_UP_JOB_ID`: nothing is
    written, and the first real message finds its connection open and its SQL compiled."""
    needs_run(factory, WARM_UP_JOB_ID)
    with factory() as session:
        session.get(Job, WARM_UP_JOB_ID)


def needs_run(factory: sessionmaker[Session], job_id: str) -> bool:
    """Whether a message for ``job_id`` needs a job process at all: False for a missing or
    terminal job and for a queued one already flagged cancelled (which :func:`cancel_job`
    ends here). One indexed read, no engine: a runner calls it before it hands a job to a
    process, so a burst of cancelled jobs costs no process start and no engine work."""
    with factory() as session:
        row = session.execute(
            sa.select(Job.status, Job.cancel_requested).where(Job.id == job_id)
        ).one_or_none()
    if row is None or row.status in TERMINAL_STATUSES:
        return False
    if row.status == "queued" and row.cancel_requested:
        cancel_job(factory, job_id)
        return False
    return True


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
    - ``queued`` with ``cancel_requested`` → :func:`cancel_job`;
    - ``queued`` → ``running`` (attempts+1, worker_id, started_at, heartbeat_at), or
      ``failed`` ``input_deleted`` when one of its inputs was erased (``service.erasure``);
    - ``running`` (a redelivery, or a job left by a stopped process): unless ``orphaned`` is
      known, wait until its heartbeat is stale, so a live run is never duplicated; then
      :func:`lost_run_outcome` ends it or it is re-run (attempts+1)."""
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
                session.close()
                cancel_job(factory, job_id)
                return None
            now, attempt = utcnow(), job.attempts + 1
            claim = _claim_from_row(job, worker_id, attempt)
            rows = _update(
                session,
                sa.and_(Job.id == job_id, Job.status == "queued"),
                {
                    "status": "running",
                    "attempts": Job.attempts + 1,
                    "worker_id": worker_id,
                    "heartbeat_at": now,
                    "started_at": sa.func.coalesce(Job.started_at, now),
                },
            )
            if rows != 1:
                session.commit()
                return None  # another worker claimed it (or a cancel won) first
            # In the claim's transaction, after its UPDATE: a deletion racing this claim is
            # either seen here or sees this job running (service.erasure, module docstring).
            erased = erased_input(session, claim.owner_id, claim.inputs)
            if erased is not None:
                _update(session, _fence(claim),
                        _terminal_values("failed", input_deleted_error(erased), now))
            session.commit()
            if erased is not None:
                error = input_deleted_error(erased)
                _event_after_commit(factory, job_id, "error", "load", error["message"], error)
                return None
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
    fence = Job.attempts == seen_attempts
    with factory() as session:
        job = session.get(Job, job_id)
        if job is None or job.status != "running" or job.attempts != seen_attempts:
            return None
        now = utcnow()
        outcome = lost_run_outcome(
            cancel_requested=job.cancel_requested,
            attempts=job.attempts,
            started_at=job.started_at or now,
            now=now,
            time_limit_s=time_limit_s,
        )
        if outcome is None:
            claim = _claim_from_row(job, worker_id, seen_attempts + 1)
            rows = _update(
                session,
                sa.and_(Job.id == job_id, Job.status == "running", fence),
                {"attempts": Job.attempts + 1, "worker_id": worker_id, "heartbeat_at": now},
            )
            session.commit()
    if outcome is not None:
        status, error = outcome
        end_job(factory, job_id, fence, status, error, message=None if error else "cancelled")
        return None
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


# ------------------------------------------------------------------ a run's writes


def poll_signal(factory: sessionmaker[Session], claim: Claim, *, heartbeat: bool) -> JobSignal:
    """Read (and with ``heartbeat`` refresh) the job row: still ours? cancel requested?"""
    with factory() as session:
        if heartbeat:
            _update(session, _fence(claim), {"heartbeat_at": utcnow()})
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
        rows = _update(session, _fence(claim), {"progress": progress, "heartbeat_at": utcnow()})
        session.commit()
    return rows == 1


# ------------------------------------------------------------------ hand-over to a runner


def mark_enqueued(factory: sessionmaker[Session], job_id: str) -> bool:
    """Record that ``job_id``'s message was handed to the runner (``enqueued_at``), so the
    reaper does not send it again. Conditional: only a ``queued`` row not yet marked (the
    reaper may have sent it first); True when this call marked it."""
    with factory() as session:
        rows = _update(
            session,
            sa.and_(Job.id == job_id, Job.status == "queued", Job.enqueued_at.is_(None)),
            {"enqueued_at": utcnow()},
        )
        session.commit()
    return rows == 1


def withdraw(factory: sessionmaker[Session], job_id: str) -> None:
    """Remove a queued job the runner refused, so nothing waits that can never run."""
    with factory() as session:
        session.execute(sa.delete(Job).where(Job.id == job_id, Job.status == "queued"))
        session.commit()
