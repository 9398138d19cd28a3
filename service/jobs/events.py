"""The one writer of job events (``GET /v1/jobs/{id}/events``): every event of every job —
the API's, the runners', the worker's — is appended by :func:`append_event` (its own
transaction) or, for the event of a transition that must be seen with it, by
:func:`add_event` inside that transition's transaction (``state.commit_success``)."""

from __future__ import annotations

import logging
import random
import time

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import Job, JobEvent, utcnow

logger = logging.getLogger(__name__)

MAX_EVENTS_PER_JOB = 2000  # a runaway event source must not fill the database
EVENT_SEQ_ATTEMPTS = 50  # racing writers of one job's events retry this often before dropping one
MAX_MESSAGE_CHARS = 2000


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
            seq_conflict_pause(attempt)
        with factory() as session:
            seq = add_event(session, job_id, level, phase, message, data)
            if seq is None:
                return None
            try:
                session.commit()
                return seq
            except IntegrityError:
                session.rollback()
    logger.warning("job %s: event dropped after repeated seq conflicts: %s", job_id, message)
    return None


def seq_conflict_pause(attempt: int) -> None:
    """The short random pause before a writer that lost a ``seq`` race tries again."""
    time.sleep(random.uniform(0.0, 0.002 * attempt))


def add_event(
    session: Session,
    job_id: str,
    level: str,
    phase: str | None,
    message: str,
    data: dict | None = None,
) -> int | None:
    """Add one event with the next ``seq`` of the job to ``session``'s transaction (the caller
    commits, and retries the transaction on an ``IntegrityError``); the seq, or None when the
    job has ``MAX_EVENTS_PER_JOB`` events already (nothing added)."""
    last = session.scalar(sa.select(sa.func.max(JobEvent.seq)).where(JobEvent.job_id == job_id))
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
            message=message[:MAX_MESSAGE_CHARS],
            data=data or {},
        )
    )
    return seq


def events_after(
    factory: sessionmaker[Session], job_id: str, after_seq: int
) -> tuple[list[JobEvent], str]:
    """The job's events with ``seq > after_seq`` in order, and the job's status now (read in
    that order, so a terminal status means every event before it was read)."""
    with factory() as session:
        events = list(
            session.scalars(
                sa.select(JobEvent)
                .where(JobEvent.job_id == job_id, JobEvent.seq > after_seq)
                .order_by(JobEvent.seq)
            )
        )
        status = session.scalar(sa.select(Job.status).where(Job.id == job_id)) or "cancelled"
        return events, status
