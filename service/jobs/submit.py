"""Submission (docs/api.md ``POST /v1/jobs``): validate on metadata, insert idempotently, hand the
job to the runner, mark it sent. The route only calls :func:`submit_job`.

The job row is committed before the runner hears of it (transactional outbox): a runner that
refuses it gets the row withdrawn (503); an API that dies between the send and the mark leaves
``enqueued_at`` NULL and the reaper sends it again (harmless: a worker claims it once)."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload, sessionmaker

from service.catalog import BuiltinCatalog
from service.db.models import Job
from service.dispatch import Dispatcher
from service.jobs.state import mark_enqueued, withdraw
from service.jobs.summary import list_columns
from service.jobs.validate import validate_job
from service.limits import check_queued_jobs
from service.problems import ProblemError, validation_problem
from service.schemas import JobCreate
from service.settings import Settings
from service.webhooks.subscriptions import subscribe

logger = logging.getLogger(__name__)


def request_hash(normalised: dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of the normalised request."""
    canonical = json.dumps(normalised, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _find_idempotent(session: Session, owner_id: str, key: str, digest: str) -> Job | None:
    job = session.scalar(
        sa.select(Job)
        .where(Job.owner_id == owner_id, Job.idempotency_key == key)
        .options(selectinload(Job.webhook_subscription))  # the route echoes it, detached
    )
    if job is not None and job.request_hash != digest:
        raise validation_problem(
            "this Idempotency-Key was used with a different request body",
            [(("header", "Idempotency-Key"), "reused with a different body")],
        )
    return job


def create_job_row(
    factory: sessionmaker[Session],
    catalog: BuiltinCatalog,
    owner_id: str,
    body: JobCreate,
    idempotency_key: str | None,
    settings: Settings | None = None,
) -> tuple[Job, bool]:
    """Validate and insert the job; returns ``(job, created)`` — ``created`` False when the
    Idempotency-Key matched an earlier submission of the same body. With ``settings``, the
    owner's queued-jobs limit applies to new jobs (a repeat is answered whatever it is). The
    key is held to the whole body (metadata and webhook included)."""
    normalised = body.normalised()
    digest = request_hash(body.fingerprint())
    with factory() as session:
        if idempotency_key is not None:
            existing = _find_idempotent(session, owner_id, idempotency_key, digest)
            if existing is not None:
                return existing, False
        if settings is not None:
            check_queued_jobs(session, owner_id, settings)
        validate_job(session, catalog, owner_id, body)
        job = Job(
            owner_id=owner_id,
            status="queued",
            request=normalised,
            request_hash=digest,
            idempotency_key=idempotency_key,
            model_id=body.model_id,
            train_dataset_id=body.train_dataset_id,
            **list_columns(body, normalised),
        )
        session.add(job)
        subscribe(session, job, body.webhook)
        try:
            session.commit()
        except sa.exc.IntegrityError:
            # A concurrent request with the same Idempotency-Key won the insert.
            session.rollback()
            if idempotency_key is None:
                raise
            existing = _find_idempotent(session, owner_id, idempotency_key, digest)
            if existing is None:
                raise
            return existing, False
        return job, True


def submit_job(
    factory: sessionmaker[Session],
    catalog: BuiltinCatalog,
    dispatcher: Dispatcher,
    owner_id: str,
    body: JobCreate,
    idempotency_key: str | None,
    settings: Settings | None = None,
) -> tuple[Job, bool]:
    """Create the job (or find the idempotent twin), send it, mark it sent. A runner that
    refuses the job → 503 ``runner-unavailable`` and the row is withdrawn."""
    job, created = create_job_row(factory, catalog, owner_id, body, idempotency_key, settings)
    if not created:
        return job, False
    try:
        dispatcher.submit(job.id)
    except Exception as err:
        withdraw(factory, job.id)
        raise ProblemError(
            503,
            f"the job runner did not accept the job ({type(err).__name__}); retry later",
            slug="runner-unavailable",
        ) from None
    # Sent: tell the reaper not to send it again. Dying (or failing to write) here leaves the
    # job unmarked and the reaper sends it a second time: harmless, the worker claims it once.
    try:
        mark_enqueued(factory, job.id)
    except Exception:
        logger.warning("job %s was sent but not marked enqueued", job.id, exc_info=True)
    return job, True
