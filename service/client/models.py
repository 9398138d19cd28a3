"""The API's resources as the client reads them (docs/api.md). Unknown fields are kept, so a newer
server never breaks an older client; ``tests/client/test_contract.py`` holds every field against
the served ``/openapi.json``, so the two cannot drift apart."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gif.result_warnings import result_warnings

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})



class _Resource(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class ModelInput(_Resource):
    """Preprocessing the model was trained with: ``x * scale``, then per-channel mean/std."""

    scale: float = 1.0
    mean: list[float] | None = None
    std: list[float] | None = None


class Model(_Resource):
    id: str
    name: str | None = None
    arch: str
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    input: ModelInput = Field(default_factory=ModelInput)
    task: str = "classification"
    num_parameters: int | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    created_at: datetime | None = None
    source_job_id: str | None = None


class Dataset(_Resource):
    id: str
    name: str | None = None
    num_samples: int | None = None
    sample_shape: list[int] | None = None
    dtype: str | None = None
    num_classes: int | None = None
    class_counts: list[int] | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    created_at: datetime | None = None
    builtin: bool = False
    source_job_id: str | None = None


class Erasure(_Resource):
    """An erasure record (``GET /v1/erasures``): what was erased, when, by which key."""

    id: str
    kind: Literal["model", "dataset", "job"]
    object_id: str
    name: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    erased_at: datetime | None = None
    reason: Literal["request", "retention"] | None = None
    api_key_id: str | None = None
    job_id: str | None = None


class ArchitectureArgument(_Resource):
    name: str
    type: str | None = None
    required: bool = False
    default: Any = None
    description: str | None = None
    minimum: int | None = None
    maximum: int | None = None
    max_items: int | None = None


class Architecture(_Resource):
    name: str
    description: str | None = None
    arguments: list[ArchitectureArgument] = Field(default_factory=list)
    flat_input: bool | None = None


class JobProgress(_Resource):
    """Where a running job is: the phase and, in a phase that iterates (the solve), the
    iteration out of ``max_iter`` and the residual."""

    phase: str | None = None
    iteration: int | None = None
    max_iter: int | None = None
    residual: float | None = None

    @property
    def iterates(self) -> bool:
        """Whether the phase counts iterations (a ``0/0`` count means it does not)."""
        return bool(self.max_iter)

    def describe(self) -> str:
        """``solve 37/100 residual 0.012``, or the phase alone when it does not iterate."""
        text = self.phase or "queued"
        if self.iterates:
            text += f" {self.iteration if self.iteration is not None else 0}/{self.max_iter}"
        if self.residual is not None:
            text += f" residual {self.residual:.4g}"
        return text


class JobError(_Resource):
    code: str
    message: str = ""


class JobWarning(_Resource):
    """Something a succeeded job's reader must not miss (``gif/result_warnings.py``): a solve
    that stopped unconverged, a step search that found nothing better than no edit."""

    code: str
    message: str = ""


class JobMetrics(_Resource):
    """Metrics per named set (``forget``, ``retain``, eval sets) plus ``score``, before/after."""

    job_id: str | None = None
    before: dict[str, Any] = Field(default_factory=dict)
    after: dict[str, Any] = Field(default_factory=dict)

    def set_names(self) -> list[str]:
        """The evaluated sets (entries that are per-set dicts; ``_``-names are summaries)."""
        names = dict.fromkeys([*self.before, *self.after])
        return [n for n in names if not n.startswith("_")
                and isinstance(self.before.get(n, self.after.get(n)), dict)]

    def score(self, stage: Literal["before", "after"]) -> float | None:
        """E9's score of one stage."""
        values = self.before if stage == "before" else self.after
        return values.get("score")


class JobResult(_Resource):
    edited_model_id: str | None = None
    scale: float | None = None
    selection: dict[str, Any] = Field(default_factory=dict)
    solver: dict[str, Any] = Field(default_factory=dict)
    metrics: JobMetrics = Field(default_factory=JobMetrics)
    timings: dict[str, float] = Field(default_factory=dict)


class JobEditSummary(_Resource):
    """A list summary's edit: its ``kind``, and ``class`` or the ``count`` of its points."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    kind: str | None = None
    class_: int | None = Field(None, alias="class")
    count: int | None = None


WebhookEvent = Literal["running", "succeeded", "failed", "cancelled"]


class JobWebhook(_Resource):
    """Where the job's events are POSTed (docs/api.md Jobs)."""

    url: str
    events: list[WebhookEvent] = Field(default_factory=list)


class WebhookAttempt(_Resource):
    at: datetime | None = None
    status_code: int | None = None
    error: str | None = None
    duration_ms: float | None = None


class WebhookDelivery(_Resource):
    """One event's delivery to the job's webhook, with every attempt (``webhook-id`` = id)."""

    id: str
    event: WebhookEvent
    url: str
    status: Literal["pending", "delivered", "failed"]
    created_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = None
    attempts: list[WebhookAttempt] = Field(default_factory=list)


class WebhookSecret(_Resource):
    """The owner's webhook signing secret (``whsec_…``)."""

    secret: str


class Job(_Resource):
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    request: dict[str, Any] = Field(default_factory=dict)
    progress: JobProgress | None = None
    error: JobError | None = None
    result: JobResult | None = None
    model_id: str | None = None
    train_dataset_id: str | None = None
    edited_model_id: str | None = None
    cancel_requested: bool = False
    method: str | None = None
    edit: JobEditSummary | None = None  # list summaries: the edit without its point lists
    metadata: dict[str, str] = Field(default_factory=dict)
    webhook: JobWebhook | None = None

    @property
    def is_terminal(self) -> bool:
        """Terminal states never change (docs/api.md, Jobs)."""
        return self.status in TERMINAL_STATUSES

    @property
    def reported_progress(self) -> JobProgress | None:
        """The progress as a callback or a display shows it. The solve reports its start
        before its first iteration (phase only); that counts as 0 of the request's
        ``solver.max_iter``, so nothing ever shows ``solve None None None`` and a bar can size
        itself from the start."""
        progress = self.progress
        if progress is None or progress.phase != "solve" or progress.iterates:
            return progress
        max_iter = (self.request.get("solver") or {}).get("max_iter")
        if not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter <= 0:
            return progress
        return progress.model_copy(update={"iteration": progress.iteration or 0,
                                           "max_iter": max_iter})

    def request_field(self, name: str) -> Any:
        """A field of the job's request (``edit``, ``method``, ...): from the full ``request``
        of ``GET /v1/jobs/{id}``, else from the top level of a list's job summary, which
        carries a bounded copy instead (docs/api.md Limits)."""
        if name in self.request:
            return self.request[name]
        if name in type(self).model_fields:
            value = getattr(self, name)
            return value.model_dump(by_alias=True) if isinstance(value, BaseModel) else value
        return (self.model_extra or {}).get(name)

    @property
    def warnings(self) -> list[JobWarning]:
        """The warnings of a succeeded job's result: those it records, else those its solver
        and step diagnostics imply (one rule, shared with the report: ``result_warnings``)."""
        if self.status != "succeeded" or self.result is None:
            return []
        found = result_warnings(self.result.model_dump(mode="json"))
        return [JobWarning.model_validate(w) for w in found]


class JobEvent(_Resource):
    seq: int
    at: datetime | None = None
    level: str = "info"
    phase: str | None = None
    message: str = ""
    data: dict[str, Any] | None = None


