"""Pydantic request and response bodies of the HTTP API (api.md), and the OpenAPI document's
shapes. The edit request itself is :class:`gif.request.EditRequest`, reused, not redefined."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from gif.request import EditRequest
from gif.spec import InputSpec
from service.db.models import JobStatus

T = TypeVar("T")



class Page(BaseModel, Generic[T]):
    """One page of a list, newest first; pass the last item's ``id`` as ``after`` for the next."""

    data: list[T]
    has_more: bool


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


class JobCreate(EditRequest):
    """The body of ``POST /v1/jobs``: the edit request plus the model and the train dataset."""

    model_id: str = Field(min_length=1, max_length=100, examples=["mdl_0123456789abcdef01234567"])
    train_dataset_id: str = Field(
        min_length=1, max_length=100, examples=["ds_0123456789abcdef01234567"]
    )


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
