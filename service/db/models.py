"""The database schema (SQLAlchemy 2, typed declarative), portable between PostgreSQL and SQLite.

The schema is only ever created by the Alembic migrations in ``migrations/``; a test checks that
they produce exactly these tables (autogenerate finds no difference).

Ids are opaque strings with a type prefix (``own_``, ``key_``, ``art_``, ``mdl_``, ``ds_``,
``job_``, ``era_``) made by :func:`new_id`. Timestamps are timezone-aware UTC everywhere: SQLite
keeps no zone, so :class:`UTCDateTime` normalises on write and re-attaches UTC on read.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

# The job statuses, defined once (the schemas, the metrics and the state machine use these).
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")  # never change once reached
ACTIVE_STATUSES = ("queued", "running")  # a job in these still needs its model and data
EVENT_LEVELS = ("debug", "info", "warning", "error")


def new_id(prefix: str) -> str:
    """A fresh opaque id: ``prefix + "_" + 24 hex characters`` (96 random bits)."""
    return f"{prefix}_{secrets.token_hex(12)}"


def utcnow() -> datetime:
    """The current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator):
    """A datetime column that always round-trips as timezone-aware UTC.

    PostgreSQL stores ``timestamptz``; SQLite stores text without a zone, so values are
    converted to UTC before writing and tagged UTC after reading. Naive inputs are refused:
    guessing their zone is how timestamps silently drift."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass a timezone-aware (UTC) value")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# Deterministic constraint names: migrations can then name (and later drop) them on every dialect.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base; JSON-typed attributes map to the portable ``sa.JSON``."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: sa.JSON, list[Any]: sa.JSON, datetime: UTCDateTime}


class Owner(Base):
    """A tenant: every resource belongs to exactly one owner and is invisible to the others."""

    __tablename__ = "owners"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True, default=lambda: new_id("own"))
    name: Mapped[str] = mapped_column(sa.String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Signs this owner's webhook deliveries (Standard Webhooks ``whsec_…``); made on first use,
    # replaced by ``gif-service webhooks rotate-secret``. Kept in clear: HMAC needs the key.
    webhook_secret: Mapped[str | None] = mapped_column(sa.String(100))


class ApiKey(Base):
    """An API key, stored as the sha256 of the whole key plus its first 12 characters for lookup."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True, default=lambda: new_id("key"))
    owner_id: Mapped[str] = mapped_column(sa.ForeignKey("owners.id"), index=True)
    prefix: Mapped[str] = mapped_column(sa.String(12), index=True)
    key_hash: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()
    last_used_at: Mapped[datetime | None] = mapped_column()


# The metrics row holding a stage's scalars (score, ...); its other rows are named sets.
SUMMARY_SET = "_summary"
CHECKPOINT_MEDIA_TYPE = "application/vnd.safetensors"  # checkpoints are stored as safetensors
DATASET_MEDIA_TYPE = "application/octet-stream"


class Artifact(Base):
    """A file in the content-addressed store (``<artifacts_dir>/<sha[:2]>/<sha>``).

    This row is the store's index: the file is only reachable through it."""

    __tablename__ = "artifacts"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True, default=lambda: new_id("art"))
    owner_id: Mapped[str] = mapped_column(sa.ForeignKey("owners.id"), index=True)
    sha256: Mapped[str] = mapped_column(sa.String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    kind: Mapped[str] = mapped_column(sa.String(32))  # checkpoint | dataset | plot | ...
    media_type: Mapped[str] = mapped_column(sa.String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set when the object holding this file was erased: the row no longer references the
    # bytes, which go once no live row with the same sha256 remains (service/erasure.py).
    erased_at: Mapped[datetime | None] = mapped_column()

    @classmethod
    def record(
        cls,
        session: Session,
        *,
        owner_id: str,
        sha256: str,
        size_bytes: int,
        kind: str,
        media_type: str,
    ) -> Artifact:
        """Add the index row of a file already in the store; flushed, so its id is known."""
        artifact = cls(
            owner_id=owner_id,
            sha256=sha256,
            size_bytes=size_bytes,
            kind=kind,
            media_type=media_type,
        )
        session.add(artifact)
        session.flush()
        return artifact


class Model(Base):
    """An uploaded or edited checkpoint with its architecture spec (api.md model object)."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True, default=lambda: new_id("mdl"))
    owner_id: Mapped[str] = mapped_column(sa.ForeignKey("owners.id"), index=True)
    name: Mapped[str | None] = mapped_column(sa.String(200))
    arch: Mapped[str] = mapped_column(sa.String(100))
    arch_kwargs: Mapped[dict[str, Any]] = mapped_column()
    input: Mapped[dict[str, Any]] = mapped_column()
    task: Mapped[str] = mapped_column(sa.String(32), default="classification")
    num_parameters: Mapped[int] = mapped_column(sa.BigInteger)
    # What the model takes and gives (gif.fit.ModelIO), stored at upload so a job submission
    # is validated without torch; NULL where the architecture cannot say.
    input_shape: Mapped[list[Any] | None] = mapped_column()  # per sample; null entry: any size
    flat_input: Mapped[bool | None] = mapped_column()
    num_outputs: Mapped[int | None] = mapped_column()
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    sha256: Mapped[str] = mapped_column(sa.String(64))
    artifact_id: Mapped[str] = mapped_column(sa.ForeignKey("artifacts.id"))
    # At most one edited model per job; use_alter breaks the models <-> jobs FK cycle.
    source_job_id: Mapped[str | None] = mapped_column(
        sa.ForeignKey("jobs.id", use_alter=True, name="fk_models_source_job_id_jobs"), unique=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    deleted_at: Mapped[datetime | None] = mapped_column()  # soft delete keeps job history valid


class Dataset(Base):
    """An uploaded dataset (api.md dataset object); built-ins have no row."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True, default=lambda: new_id("ds"))
    owner_id: Mapped[str] = mapped_column(sa.ForeignKey("owners.id"), index=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    num_samples: Mapped[int] = mapped_column()
    sample_shape: Mapped[list[Any]] = mapped_column()
    dtype: Mapped[str] = mapped_column(sa.String(32))
    num_classes: Mapped[int] = mapped_column()
    class_counts: Mapped[list[Any]] = mapped_column()
    sha256: Mapped[str] = mapped_column(sa.String(64))
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    artifact_id: Mapped[str] = mapped_column(sa.ForeignKey("artifacts.id"))
    # The job whose ``outputs.retained_dataset`` produced it (None for uploads); no foreign
    # key, like ``jobs.train_dataset_id``, to keep the datasets <-> jobs graph acyclic.
    source_job_id: Mapped[str | None] = mapped_column(sa.String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    deleted_at: Mapped[datetime | None] = mapped_column()


class Job(Base):
    """An edit job: the source of truth for its state (``queued → running → terminal``).

    Transitions are conditional UPDATEs (``WHERE status IN (...)``) so terminal states never
    change, whoever races."""

    __tablename__ = "jobs"
    __table_args__ = (
        sa.UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        # The queued-jobs limit counts an owner's queued jobs on every submission (index only).
        sa.Index("ix_jobs_owner_id_status", "owner_id", "status"),
    )

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True, default=lambda: new_id("job"))
    owner_id: Mapped[str] = mapped_column(sa.ForeignKey("owners.id"), index=True)
    status: Mapped[str] = mapped_column(sa.String(16), default="queued", index=True)
    request: Mapped[dict[str, Any]] = mapped_column()
    request_hash: Mapped[str] = mapped_column(sa.String(64))
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(255))
    model_id: Mapped[str] = mapped_column(sa.ForeignKey("models.id"), index=True)
    train_dataset_id: Mapped[str] = mapped_column(sa.String(100))  # ds_… or builtin:…
    progress: Mapped[dict[str, Any] | None] = mapped_column()
    error: Mapped[dict[str, Any] | None] = mapped_column()
    result: Mapped[dict[str, Any] | None] = mapped_column()
    edited_model_id: Mapped[str | None] = mapped_column(sa.String(40))
    cancel_requested: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    worker_id: Mapped[str | None] = mapped_column(sa.String(200))
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    # When its message was handed to the runner; NULL while queued means "maybe never sent"
    # (the API died between the commit and the send): the reaper sends it (outbox pattern).
    enqueued_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    # Erased (DELETE /v1/jobs/{id} or retention): request, result, events and metrics are gone;
    # the row stays so the edited model's source_job_id and the erasure records still resolve.
    deleted_at: Mapped[datetime | None] = mapped_column()
    # What a list shows without reading ``request`` (which may hold a million indices), and
    # what it filters on (service/api/job_lists.py). NULL only on rows older than revision 0006.
    method: Mapped[str | None] = mapped_column(sa.String(32))
    edit_summary: Mapped[dict[str, Any] | None] = mapped_column()
    # The user's labels (``metadata`` in docs/api.md; the attribute name ``metadata`` is taken).
    job_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata")
    webhook_subscription: Mapped[WebhookSubscription | None] = relationship(
        lazy="select", uselist=False
    )


class JobEvent(Base):
    """One line of a job's log (``GET /v1/jobs/{id}/events``); ``seq`` orders them per job."""

    __tablename__ = "job_events"
    __table_args__ = (sa.UniqueConstraint("job_id", "seq", name="uq_job_events_job_id_seq"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(sa.ForeignKey("jobs.id"), index=True)
    seq: Mapped[int] = mapped_column()
    at: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(sa.String(16), default="info")
    phase: Mapped[str | None] = mapped_column(sa.String(32))
    message: Mapped[str] = mapped_column(sa.Text)
    data: Mapped[dict[str, Any] | None] = mapped_column()


class Metric(Base):
    """Metrics of one named set before or after an edit (``_summary`` holds scalars like score)."""

    __tablename__ = "metrics"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(sa.ForeignKey("jobs.id"), index=True)
    model_id: Mapped[str | None] = mapped_column(sa.String(40))
    stage: Mapped[str] = mapped_column(sa.String(16))  # before | after
    dataset: Mapped[str] = mapped_column(sa.String(200))
    values: Mapped[dict[str, Any]] = mapped_column()


ERASURE_KINDS = ("model", "dataset", "job")
ERASURE_REASONS = ("request", "retention")


class Erasure(Base):
    """The audit record of one erasure (``GET /v1/erasures``): what was erased, when, by which
    key (None for retention) and the job that produced or last used it. No content of what
    was erased: metadata only. Written in the transaction that erases the object."""

    __tablename__ = "erasures"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True, default=lambda: new_id("era"))
    owner_id: Mapped[str] = mapped_column(sa.ForeignKey("owners.id"), index=True)
    kind: Mapped[str] = mapped_column(sa.String(16))  # ERASURE_KINDS
    object_id: Mapped[str] = mapped_column(sa.String(40), index=True)
    name: Mapped[str | None] = mapped_column(sa.String(200))
    sha256: Mapped[str | None] = mapped_column(sa.String(64))
    size_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    reason: Mapped[str] = mapped_column(sa.String(16))  # ERASURE_REASONS
    api_key_id: Mapped[str | None] = mapped_column(sa.String(40))
    job_id: Mapped[str | None] = mapped_column(sa.String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)  # when erased


class WebhookSubscription(Base):
    """A job's ``webhook`` (docs/api.md): where to POST which events. ``planned`` lists the events
    already turned into deliveries; ``done`` is set once the job is terminal and every
    subscribed event that happened is planned, so the planner only scans open subscriptions."""

    __tablename__ = "webhook_subscriptions"

    job_id: Mapped[str] = mapped_column(sa.ForeignKey("jobs.id"), primary_key=True)
    owner_id: Mapped[str] = mapped_column(sa.ForeignKey("owners.id"), index=True)
    url: Mapped[str] = mapped_column(sa.String(2048))
    events: Mapped[list[Any]] = mapped_column()
    planned: Mapped[list[Any]] = mapped_column()
    done: Mapped[bool] = mapped_column(default=False, server_default=sa.false(), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One event of one job to deliver (the outbox): the exact body signed and sent on every
    attempt, the attempts' outcomes, and when the next attempt is due. Rows survive restarts,
    so a delivery is retried until it succeeds or runs out of attempts, never lost."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        sa.UniqueConstraint("job_id", "event", name="uq_webhook_deliveries_job_id_event"),
    )

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True, default=lambda: new_id("msg"))
    job_id: Mapped[str] = mapped_column(sa.ForeignKey("jobs.id"), index=True)
    owner_id: Mapped[str] = mapped_column(sa.ForeignKey("owners.id"), index=True)
    event: Mapped[str] = mapped_column(sa.String(16))
    url: Mapped[str] = mapped_column(sa.String(2048))
    body: Mapped[str] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.String(16), default="pending", index=True)
    attempts: Mapped[list[Any]] = mapped_column()
    next_attempt_at: Mapped[datetime | None] = mapped_column(index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
