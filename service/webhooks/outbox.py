"""The outbox of webhook deliveries: status changes become rows (:func:`plan`), due rows are
claimed (:func:`claim_due`), and every attempt's outcome is written back (:func:`record`).

Each step is a short transaction with a conditional write, so several API processes can run
it at once: the unique ``(job_id, event)`` makes a delivery planned once, and a claim moves
``next_attempt_at`` past the attempt (a lease) so one process sends it. A process that dies
mid-attempt leaves the lease to expire and the delivery is sent again: deliveries are
at-least-once, and ``webhook-id`` stays the same, so receivers can drop repeats."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import (
    TERMINAL_STATUSES,
    Job,
    WebhookDelivery,
    WebhookSubscription,
    utcnow,
)
from service.jobs.summary import job_summary

PLAN_BATCH = 200
SEND_BATCH = 32
MAX_BACKOFF_S = 3600.0
MAX_ERROR_CHARS = 300


def events_happened(job: Job) -> list[str]:
    """The webhook events a job's row shows have happened, in order."""
    happened = ["running"] if job.started_at is not None else []
    if job.status in TERMINAL_STATUSES:
        happened.append(job.status)
    return happened


def event_body(job: Job, event: str, at: datetime) -> str:
    """The JSON body of a delivery (Standard Webhooks' ``type``/``timestamp``/``data``): the
    job's summary when the event was planned. Fixed once, so every attempt signs the same."""
    payload = {
        "type": f"job.{event}",
        "timestamp": at.isoformat().replace("+00:00", "Z"),
        "data": job_summary(job).model_dump(mode="json", by_alias=True),
    }
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=True)


def plan(factory: sessionmaker[Session]) -> int:
    """Turn the status changes of jobs with an open subscription into deliveries; returns how
    many were planned. A subscription closes once its job is terminal."""
    planned = 0
    with factory() as session:
        rows = session.execute(
            sa.select(WebhookSubscription, Job)
            .join(Job, Job.id == WebhookSubscription.job_id)
            .where(WebhookSubscription.done.is_(False))
            .where(sa.or_(Job.started_at.is_not(None), Job.status.in_(TERMINAL_STATUSES)))
            .limit(PLAN_BATCH)
        ).all()
        for subscription, job in rows:
            planned += _plan_one(session, subscription, job)
    return planned


def _plan_one(session: Session, subscription: WebhookSubscription, job: Job) -> int:
    now = utcnow()
    happened = events_happened(job)
    new = [e for e in happened if e in subscription.events and e not in subscription.planned]
    for event in new:
        session.add(WebhookDelivery(
            job_id=job.id, owner_id=job.owner_id, event=event, url=subscription.url,
            body=event_body(job, event, now), status="pending", attempts=[],
            next_attempt_at=now,
        ))
    subscription.planned = [*subscription.planned, *new]
    subscription.done = job.status in TERMINAL_STATUSES
    try:
        session.commit()
    except sa.exc.IntegrityError:  # another API process planned them first
        session.rollback()
        return 0
    return len(new)


@dataclass(frozen=True)
class Due:
    """A claimed delivery: what to send where, on behalf of whom."""

    id: str
    owner_id: str
    url: str
    body: str
    attempt: int  # 1 for the first


def claim_due(factory: sessionmaker[Session], lease_s: float) -> list[Due]:
    """Claim the pending deliveries whose attempt is due (oldest first) for ``lease_s``."""
    now = utcnow()
    claimed = []
    with factory() as session:
        rows = session.execute(
            sa.select(WebhookDelivery.id, WebhookDelivery.next_attempt_at)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.created_at)
            .limit(SEND_BATCH)
        ).all()
        for delivery_id, due_at in rows:
            won = session.execute(
                sa.update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id,
                       WebhookDelivery.status == "pending",
                       WebhookDelivery.next_attempt_at == due_at)
                .values(next_attempt_at=now + timedelta(seconds=lease_s))
            ).rowcount
            session.commit()
            if won:
                row = session.get(WebhookDelivery, delivery_id)
                assert row is not None
                claimed.append(Due(row.id, row.owner_id, row.url, row.body,
                                   len(row.attempts) + 1))
    return claimed


def backoff_s(attempt: int, base_s: float) -> float:
    """Delay before the attempt after failed attempt number ``attempt``: base · 2^(n-1)."""
    return min(base_s * 2.0 ** (attempt - 1), MAX_BACKOFF_S)


def record(
    factory: sessionmaker[Session],
    due: Due,
    outcome: dict[str, Any],
    *,
    max_attempts: int,
    retry_base_s: float,
    retry: bool = True,
) -> str:
    """Write one attempt's ``outcome`` (``at``, ``status_code``, ``error``, ``duration_ms``)
    and the delivery's next state: ``delivered`` on a 2xx, else ``pending`` with the next
    attempt after the backoff, or ``failed`` when attempts (or ``retry``) run out."""
    with factory() as session:
        row = session.get(WebhookDelivery, due.id)
        if row is None or row.status != "pending":
            return row.status if row is not None else "failed"
        attempts = [*row.attempts, outcome]
        code = outcome.get("status_code")
        now = utcnow()
        if code is not None and 200 <= code < 300:
            row.status, row.finished_at, row.next_attempt_at = "delivered", now, None
        elif not retry or len(attempts) >= max_attempts:
            row.status, row.finished_at, row.next_attempt_at = "failed", now, None
        else:
            row.next_attempt_at = now + timedelta(seconds=backoff_s(len(attempts), retry_base_s))
        row.attempts = attempts
        session.commit()
        return row.status


def deliveries_of(session: Session, job_id: str) -> list[WebhookDelivery]:
    """The job's deliveries, oldest first (``GET /v1/jobs/{id}/webhooks``)."""
    return list(session.scalars(
        sa.select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
        .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
    ))
