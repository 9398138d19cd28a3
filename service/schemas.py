"""Pydantic request and response bodies of the HTTP API (api.md), and the OpenAPI document's
shapes. The edit request itself is :class:`gif.request.EditRequest`, reused, not redefined."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gif.request import EditRequest
from gif.spec import InputSpec, refuse_long
from service.db.models import JobStatus

T = TypeVar("T")

WebhookEvent = Literal["running", "succeeded", "failed", "cancelled"]

# Caps of the job body's own maps and lists (docs/api.md Limits); the edit request's are in
# gif/request.py (MAX_EDIT_POINTS, MAX_EVAL_DATASETS, ...).
MAX_METADATA_KEYS = 16
MAX_METADATA_KEY_LENGTH = 64
MAX_METADATA_VALUE_LENGTH = 512
MAX_WEBHOOK_URL_LENGTH = 2048
DEFAULT_WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("succeeded", "failed", "cancelled")

# Letters, digits and ``_ - . : /``: a key is a name (as in Kubernetes labels), and it stays
# plain inside the JSON path of a database's metadata filter on every dialect.
METADATA_KEY_PATTERN = r"^[A-Za-z0-9_.:/-]+$"
MetadataKey = Annotated[
    str, Field(min_length=1, max_length=MAX_METADATA_KEY_LENGTH, pattern=METADATA_KEY_PATTERN)
]
MetadataValue = Annotated[str, Field(max_length=MAX_METADATA_VALUE_LENGTH)]


class Page(BaseModel, Generic[T]):
    """One page of a list, newest first. For the next page pass ``next_cursor`` as ``after``
    (it stays valid when the item it names is deleted or leaves the filter); the last item's
    ``id`` is accepted too."""

    data: list[T]
    has_more: bool
    next_cursor: str | None = Field(
        None, description="Opaque; pass as `after` for the next page. Null on the last page."
    )


class ModelOut(BaseModel):
    """A stored model (api.md ``POST /v1/models`` response)."""

    model_config = ConfigDict(from_attributes=True)

    id: str = Field(examples=["mdl_0123456789abcdef01234567"])
    name: str | None
    arch: str
    arch_kwargs: dict[str, Any]
    input: InputSpec
    task: str
    num_parameters: int
    size_bytes: int
    sha256: str
    created_at: datetime
    source_job_id: str | None = Field(
        description="The job whose edit produced this model; null for uploads."
    )


class DatasetOut(BaseModel):
    """An uploaded or built-in dataset (built-ins have no sha256/created_at)."""

    model_config = ConfigDict(from_attributes=True)

    id: str = Field(examples=["ds_0123456789abcdef01234567", "builtin:fashion-mnist:test"])
    name: str
    num_samples: int
    sample_shape: list[int]
    dtype: str
    num_classes: int
    class_counts: list[int]
    sha256: str | None
    size_bytes: int | None = None
    created_at: datetime | None
    builtin: bool = False
    source_job_id: str | None = Field(
        None, description="The job whose outputs.retained_dataset produced it (None: uploaded)."
    )


class ArchitectureArgument(BaseModel):
    name: str
    type: str
    required: bool
    default: Any = None
    description: str | None = None
    minimum: int | None = None
    maximum: int | None = None
    max_items: int | None = None


class ArchitectureOut(BaseModel):
    """A registered architecture with its keyword arguments (``GET /v1/architectures``)."""

    name: str
    description: str
    arguments: list[ArchitectureArgument]
    flat_input: bool


class ArchitectureList(BaseModel):
    data: list[ArchitectureOut]


class Webhook(BaseModel):
    """Where to POST the job's events (docs/api.md): each delivery is signed the Standard Webhooks
    way with the owner's secret, retried with backoff, and listed under the job."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1, max_length=MAX_WEBHOOK_URL_LENGTH,
        description="http(s) URL without user:password. Private, loopback and link-local "
                    "addresses are refused unless the operator allows them "
                    "(GIF_WEBHOOK_ALLOW_PRIVATE).",
        examples=["https://example.com/hooks/gif"],
    )
    events: list[WebhookEvent] = Field(
        default_factory=lambda: list(DEFAULT_WEBHOOK_EVENTS), min_length=1, max_length=4,
        description="Which status changes to deliver. Default: the terminal ones.",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError as err:
            raise ValueError(f"not a URL: {err}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("webhook url must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("webhook url may not hold user:password (it is shown in logs)")
        return url

    @field_validator("events")
    @classmethod
    def _unique(cls, events: list[str]) -> list[str]:
        return list(dict.fromkeys(events))


# JobCreate's fields that are the job's, not the edit's: not in the stored ``request``.
_JOB_FIELDS = frozenset({"metadata", "webhook"})


class JobCreate(EditRequest):
    """The body of ``POST /v1/jobs``: the edit request plus the model and the train dataset,
    the user's ``metadata`` and an optional ``webhook``."""

    model_id: str = Field(min_length=1, max_length=100, examples=["mdl_0123456789abcdef01234567"])
    train_dataset_id: str = Field(
        min_length=1, max_length=100, examples=["ds_0123456789abcdef01234567"]
    )
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict, max_length=MAX_METADATA_KEYS,
        description=f"Up to {MAX_METADATA_KEYS} string keys (1–{MAX_METADATA_KEY_LENGTH} "
                    f"letters, digits or _-.:/) → string values (≤ {MAX_METADATA_VALUE_LENGTH}"
                    "); echoed, filterable in lists (`metadata[key]=value`).",
        examples=[{"ticket": "GDPR-1234"}],
    )
    webhook: Webhook | None = None

    @field_validator("metadata", mode="before")
    @classmethod
    def _few_keys(cls, value: Any) -> Any:
        return refuse_long(value, MAX_METADATA_KEYS, "metadata")

    def normalised(self) -> dict:
        """The stored ``request``: the edit request and the two ids, defaults filled in. The
        metadata and the webhook are the job's, not the edit's: stored beside it."""
        return self.model_dump(mode="json", by_alias=True, exclude=set(_JOB_FIELDS))

    def fingerprint_and_normalised(self) -> tuple[dict, dict]:
        """The fingerprint (everything the client sent, normalised: what an Idempotency-Key is
        held to) and ``normalised()`` from one dump: the stored request is the fingerprint less
        its two top-level job fields (a submission needs both, and a dump of the whole request
        is most of what its validation of the body costs again)."""
        fingerprint = self.model_dump(mode="json", by_alias=True)
        normalised = {k: v for k, v in fingerprint.items() if k not in _JOB_FIELDS}
        return fingerprint, normalised


class JobError(BaseModel):
    """Why a job failed: a stable ``code`` and a message for people."""

    model_config = ConfigDict(extra="allow")

    code: str = Field(examples=["solver_diverged"])
    message: str = ""


class JobOut(BaseModel):
    """The job object (api.md)."""

    id: str = Field(examples=["job_0123456789abcdef01234567"])
    status: JobStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    request: dict[str, Any] = Field(description="The normalised request, defaults filled in.")
    progress: dict[str, Any] | None
    error: JobError | None
    result: dict[str, Any] | None
    model_id: str
    train_dataset_id: str
    edited_model_id: str | None
    cancel_requested: bool
    method: str | None = None
    edit: EditSummary | None = Field(
        None, description="The edit without its point lists (as in list summaries).")
    metadata: dict[str, str] = Field(default_factory=dict)
    webhook: Webhook | None = None


class EditSummary(BaseModel):
    """The edit without its point lists: ``kind``, and ``class`` or the ``count`` of points."""

    model_config = ConfigDict(populate_by_name=True)

    kind: str | None
    class_: int | None = Field(None, alias="class")
    count: int | None = None


class JobSummary(BaseModel):
    """A job in a list (docs/api.md Limits): bounded whatever its request holds. The full
    ``request`` and ``result`` come with ``GET /v1/jobs/{id}``."""

    id: str = Field(examples=["job_0123456789abcdef01234567"])
    status: JobStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    model_id: str
    train_dataset_id: str
    method: str | None
    edit: EditSummary | None
    metadata: dict[str, str]
    progress: dict[str, Any] | None
    error: JobError | None
    edited_model_id: str | None
    cancel_requested: bool


class WebhookAttempt(BaseModel):
    """One POST of a delivery: when, the receiver's status code (null: no answer), why it
    failed, how long it took."""

    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float


class WebhookDeliveryOut(BaseModel):
    """A delivery of one event to the job's webhook (``webhook-id`` is its ``id``)."""

    id: str = Field(examples=["msg_0123456789abcdef01234567"])
    event: WebhookEvent
    url: str
    status: Literal["pending", "delivered", "failed"]
    created_at: datetime
    finished_at: datetime | None
    next_attempt_at: datetime | None
    attempts: list[WebhookAttempt]


class JobEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    seq: int
    at: datetime
    level: str
    phase: str | None
    message: str
    data: dict[str, Any] | None


class JobMetricsOut(BaseModel):
    """Metrics before/after, shaped as the job's ``result.metrics``: per named set (``forget``,
    ``retain``, eval names) plus the stage's scalars (``score``, ...)."""

    job_id: str
    before: dict[str, Any]
    after: dict[str, Any]


class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    status: Literal["ready"]
    database: Literal["ok"]
    runner: str


class ErasureOut(BaseModel):
    """The audit record of one erasure (``GET /v1/erasures``): what, when, by which key, and
    the job that produced or last used it. It holds no content of what was erased."""

    model_config = ConfigDict(from_attributes=True)

    id: str = Field(examples=["era_0123456789abcdef01234567"])
    kind: Literal["model", "dataset", "job"]
    object_id: str = Field(description="The id of what was erased.")
    name: str | None
    sha256: str | None = Field(description="The erased file's sha256 (None for a job).")
    size_bytes: int | None
    erased_at: datetime = Field(validation_alias="created_at")
    reason: Literal["request", "retention"] = Field(
        description="request: a DELETE; retention: the operator's GIF_RETENTION_* limits."
    )
    api_key_id: str | None = Field(description="The key that asked (None for retention).")
    job_id: str | None = Field(
        description="The job that produced the object, or else the last one that used it."
    )
