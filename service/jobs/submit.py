"""Submission (docs/api.md ``POST /v1/jobs``): validate on metadata, insert idempotently, hand the
job to the runner, mark it sent. The route only calls :func:`submit_job`.

One connection, one commit: the idempotency lookup, the queued-jobs count, the model and dataset
reads and the insert (with its webhook subscription) are prebuilt Core statements on one plain
connection (no session, no ORM objects: their unit of work and instrumentation cost more than
the statements), and nothing is read back — the answer is built from the values inserted.
On PostgreSQL a submission without a webhook inserts in autocommit (the insert is its only
write): no BEGIN and COMMIT round trips.

The job row is committed before the runner hears of it (transactional outbox): a runner that
refuses it gets the row withdrawn (503). For a broker (Celery) the ``enqueued_at`` mark is a
second, later write, after the broker took the message: an API that dies between the send and
the mark leaves it NULL and the reaper sends it again (harmless: a worker claims it once). An
in-process runner (``Dispatcher.in_process``: the local runner, ``none``) cannot lose a message
the reaper would resend — the local runner takes over every ``queued`` row when it starts — so
its row is inserted already marked, in the same commit."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased, sessionmaker

from service.catalog import BuiltinCatalog
from service.db.models import Dataset, Job, Model, new_id, utcnow
from service.db.owned import owned_condition
from service.db.session import engine_of
from service.dispatch import Dispatcher
from service.jobs.state import mark_enqueued, withdraw
from service.jobs.summary import list_columns
from service.jobs.validate import DATASET_COLUMNS, MODEL_COLUMNS, Prefetched, validate_job
from service.jobs.view import job_object, read_job_object
from service.limits import QUEUED_JOBS, queued_cap, refuse_queued_jobs
from service.problems import ProblemError, validation_problem
from service.schemas import JobCreate, JobOut
from service.settings import Settings
from service.webhooks.subscriptions import subscribe

logger = logging.getLogger(__name__)


def request_hash(normalised: dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of the normalised request."""
    canonical = json.dumps(normalised, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


# Built once: every submission with a key runs it; a new key (the common case) costs one
# narrow indexed read, and only a repeat reads its job.
_IDEMPOTENT_TWIN = sa.select(Job.id, Job.request_hash).where(
    Job.owner_id == sa.bindparam("owner_id"), Job.idempotency_key == sa.bindparam("key")
)
_INSERT_JOB = sa.insert(Job)

# Everything a submission reads before its insert, in one statement (one round trip, one
# statement's overhead instead of four): the queued-jobs count, the idempotency twin (id and
# hash; none without a key: NULL matches nothing), the model's and the train set's validation
# columns (NULL where the owner has no such row). Built once.
_twin = aliased(Job, name="twin")
_anchor = sa.select(sa.literal_column("1").label("one")).subquery("anchor")
_SUBMISSION_READS = sa.select(
    QUEUED_JOBS.label("queued"),
    _twin.id.label("twin_id"), _twin.request_hash.label("twin_hash"),
    Model.id.label("found_model"), *MODEL_COLUMNS,
    Dataset.id.label("found_dataset"), *DATASET_COLUMNS,
).select_from(
    _anchor
    .outerjoin(_twin, sa.and_(_twin.owner_id == sa.bindparam("owner_id"),
                              _twin.idempotency_key == sa.bindparam("key")))
    .outerjoin(Model, owned_condition(Model, "model_id"))
    .outerjoin(Dataset, owned_condition(Dataset, "dataset_id"))
)


def _check_twin(
    connection: sa.Connection, owner_id: str, twin_id: str | None, twin_hash: str | None,
    digest: str,
) -> JobOut | None:
    if twin_id is None:
        return None
    if twin_hash != digest:
        raise validation_problem(
            "this Idempotency-Key was used with a different request body",
            [(("header", "Idempotency-Key"), "reused with a different body")],
        )
    return read_job_object(connection, owner_id, twin_id)


def _find_idempotent(
    connection: sa.Connection, owner_id: str, key: str, digest: str
) -> JobOut | None:
    twin = connection.execute(_IDEMPOTENT_TWIN, {"owner_id": owner_id, "key": key}).first()
    return _check_twin(connection, owner_id, *(twin or (None, None)), digest)


def _new_row(
    owner_id: str, body: JobCreate, normalised: dict[str, Any], idempotency_key: str | None,
    digest: str, enqueued: bool,
) -> dict[str, Any]:
    """The new row's values, keyed by column, every column given (nothing is left for the
    database to fill in, so nothing needs reading back). ``normalised``: ``body.normalised()``."""
    now = utcnow()
    listed = list_columns(body, normalised)
    return {
        "id": new_id("job"),
        "owner_id": owner_id,
        "status": "queued",
        "request": normalised,
        "request_hash": digest,
        "idempotency_key": idempotency_key,
        "model_id": body.model_id,
        "train_dataset_id": body.train_dataset_id,
        "progress": None,
        "error": None,
        "result": None,
        "edited_model_id": None,
        "cancel_requested": False,
        "attempts": 0,
        "worker_id": None,
        "heartbeat_at": None,
        "enqueued_at": now if enqueued else None,
        "created_at": now,
        "started_at": None,
        "finished_at": None,
        "deleted_at": None,
        "method": listed["method"],
        "edit_summary": listed["edit_summary"],
        "metadata": listed["job_metadata"],
    }


def create_job_row(
    factory: sessionmaker[Session],
    catalog: BuiltinCatalog,
    owner_id: str,
    body: JobCreate,
    idempotency_key: str | None,
    settings: Settings | None = None,
    *,
    enqueued: bool = False,
) -> tuple[JobOut, bool]:
    """Validate and insert the job; returns ``(job, created)`` — the job object, and
    ``created`` False when the Idempotency-Key matched an earlier submission of the same body.
    With ``settings``, the owner's queued-jobs limit applies to new jobs (a repeat is answered
    whatever it is). The key is held to the whole body (metadata and webhook included).
    ``enqueued``: insert the row with ``enqueued_at`` set (an in-process runner; see the module
    docstring)."""
    fingerprint, normalised = body.fingerprint_and_normalised()
    digest = request_hash(fingerprint)
    with engine_of(factory).connect() as connection:
        if body.webhook is None and connection.dialect.name != "sqlite":
            # PostgreSQL, one write (the insert): in autocommit it is its own transaction,
            # committed and flushed to the WAL before it returns, without the BEGIN and COMMIT
            # round trips. The reads need no transaction: at READ COMMITTED each statement sees
            # its own snapshot anyway. With a webhook the two inserts commit together. SQLite
            # has no round trips to save, and autocommit there would cost a PRAGMA on every
            # checkin (SQLAlchemy resets the isolation level) and hold the process's write lock
            # (SerialWriterConnection) until that reset instead of until the commit below.
            connection.execution_options(isolation_level="AUTOCOMMIT")
        reads = connection.execute(_SUBMISSION_READS, {
            "owner_id": owner_id, "key": idempotency_key, "model_id": body.model_id,
            "dataset_id": body.train_dataset_id,
            "queued_cap": queued_cap(settings) if settings is not None else 0,
        }).one()
        existing = _check_twin(connection, owner_id, reads.twin_id, reads.twin_hash, digest)
        if existing is not None:
            return existing, False
        if settings is not None:
            refuse_queued_jobs(reads.queued, settings)
        validate_job(connection, catalog, owner_id, body, Prefetched(
            model=reads if reads.found_model is not None else None,
            train=reads if reads.found_dataset is not None else None,
        ))
        row = _new_row(owner_id, body, normalised, idempotency_key, digest, enqueued)
        try:
            connection.execute(_INSERT_JOB, row)
            webhook = (subscribe(connection, row["id"], owner_id, body.webhook)
                       if body.webhook is not None else None)
            connection.commit()
        except sa.exc.IntegrityError:
            # A concurrent request with the same Idempotency-Key won the insert.
            connection.rollback()
            if idempotency_key is None:
                raise
            existing = _find_idempotent(connection, owner_id, idempotency_key, digest)
            if existing is None:
                raise
            return existing, False
    return job_object(row, webhook), True


def submit_job(
    factory: sessionmaker[Session],
    catalog: BuiltinCatalog,
    dispatcher: Dispatcher,
    owner_id: str,
    body: JobCreate,
    idempotency_key: str | None,
    settings: Settings | None = None,
) -> tuple[JobOut, bool]:
    """Create the job (or find the idempotent twin), send it, mark it sent (in the insert's
    commit for an in-process runner). A runner that refuses the job → 503
    ``runner-unavailable`` and the row is withdrawn."""
    in_process = bool(getattr(dispatcher, "in_process", False))
    job, created = create_job_row(factory, catalog, owner_id, body, idempotency_key, settings,
                                  enqueued=in_process)
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
    if in_process:
        return job, True
    # Sent: tell the reaper not to send it again. Dying (or failing to write) here leaves the
    # job unmarked and the reaper sends it a second time: harmless, the worker claims it once.
    try:
        mark_enqueued(factory, job.id)
    except Exception:
        logger.warning("job %s was sent but not marked enqueued", job.id, exc_info=True)
    return job, True
