"""``/v1/jobs``: submit (validated, idempotent), list, get, cancel, events (JSON or live SSE),
metrics. The job row is the source of truth; the dispatcher is only told "job X waits"."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from gif.errors import InvalidRequest
from gif.request import RESERVED_SET_NAMES, Relabel, RemoveClass, RemoveSamples
from gif.spec import ModelSpec
from service.api.common import AUTH_PROBLEMS, get_owned, paginate, problem_responses
from service.api.deps import (
    CatalogDep,
    DispatcherDep,
    OwnerDep,
    PageDep,
    SessionDep,
    SessionFactoryDep,
)
from service.catalog import BuiltinCatalog, DatasetSummary
from service.db.models import (
    SUMMARY_SET,
    TERMINAL_STATUSES,
    Dataset,
    Job,
    JobEvent,
    Metric,
    Model,
    utcnow,
)
from service.dispatch import mark_enqueued
from service.problems import ProblemError, validation_problem
from service.schemas import JobCreate, JobEventOut, JobMetricsOut, JobOut, JobStatus, Page

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=AUTH_PROBLEMS)

BUILTIN_PREFIX = "builtin:"
# Names the edit's own metrics use; an eval set may not shadow them (checked at submission).
RESERVED_EVAL_NAMES = (*RESERVED_SET_NAMES, SUMMARY_SET)
SSE_POLL_INTERVAL_S = 0.5
SSE_KEEPALIVE_S = 15.0


def job_out(job: Job) -> JobOut:
    return JobOut(
        id=job.id,
        status=job.status,  # type: ignore[arg-type]
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        request=job.request,
        progress=job.progress,
        error=job.error,  # type: ignore[arg-type]
        result=job.result,
        model_id=job.model_id,
        train_dataset_id=job.train_dataset_id,
        edited_model_id=job.edited_model_id,
        cancel_requested=job.cancel_requested,
    )


def request_hash(normalised: dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of the normalised request."""
    canonical = json.dumps(normalised, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


# ------------------------------------------------------------------ submission-time validation


Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class ResolvedDataset:
    id: str
    summary: DatasetSummary


def _resolve_dataset(
    session: Session, catalog: BuiltinCatalog, owner_id: str, dataset_id: str, loc: Loc
) -> ResolvedDataset:
    if dataset_id.startswith(BUILTIN_PREFIX):
        summary = catalog.get(dataset_id)
    else:
        row = session.get(Dataset, dataset_id)
        owned = row is not None and row.owner_id == owner_id and row.deleted_at is None
        summary = (
            DatasetSummary(
                num_samples=row.num_samples,
                sample_shape=list(row.sample_shape),
                dtype=row.dtype,
                num_classes=row.num_classes,
                class_counts=list(row.class_counts),
            )
            if owned and row is not None
            else None
        )
    if summary is None:
        raise _invalid(loc, f"unknown dataset {dataset_id!r}")
    return ResolvedDataset(dataset_id, summary)


def _invalid(loc: Loc, msg: str) -> ProblemError:
    return validation_problem(msg, [(("body", *loc), msg)])


@dataclass(frozen=True)
class _Shape:
    """The metadata of a dataset that ``gif.data.check_dataset_fits`` reads (no arrays)."""

    name: str
    sample_shape: tuple[int, ...]
    num_classes: int


def _check_fits(spec: ModelSpec, dataset: ResolvedDataset, loc: Loc) -> None:
    """The engine's own fit check (shape, channels, labels vs outputs), on metadata only."""
    from gif.data import check_dataset_fits

    shape = _Shape(
        name=dataset.id,
        sample_shape=tuple(dataset.summary.sample_shape),
        num_classes=dataset.summary.num_classes,
    )
    try:
        check_dataset_fits(spec, shape, loc=loc)  # type: ignore[arg-type]
    except InvalidRequest as err:
        raise _invalid(loc, err.message) from None


def _num_outputs(spec: ModelSpec, sample_shape: Sequence[int]) -> int | None:
    """The model's number of classes, from a forward pass on the meta device (no memory, no
    compute); None when the architecture cannot run on meta tensors."""
    import torch

    from gif.registry import build_meta_model, get_architecture

    architecture = get_architecture(spec.arch)
    shape = (math.prod(sample_shape),) if architecture.flat_input else tuple(sample_shape)
    try:
        model = build_meta_model(spec).eval()
        with torch.no_grad():
            out = model(torch.empty((1, *shape), device="meta"))
        return int(out.shape[-1])
    except Exception:  # an architecture without meta support: the worker checks at load
        return None


def validate_job(
    session: Session, catalog: BuiltinCatalog, owner_id: str, body: JobCreate
) -> None:
    """Every reason the job could not run that is knowable now → 422 naming the field.

    Uses only metadata (rows and catalogue summaries), so submission stays cheap."""
    model = session.get(Model, body.model_id)
    if model is None or model.owner_id != owner_id or model.deleted_at is not None:
        raise _invalid(("model_id",), f"unknown model {body.model_id!r}")
    spec = ModelSpec(
        arch=model.arch, arch_kwargs=model.arch_kwargs, input=model.input, task=model.task
    )
    train = _resolve_dataset(
        session, catalog, owner_id, body.train_dataset_id, ("train_dataset_id",)
    )
    evals = {}
    for name, dataset_id in body.eval.datasets.items():
        loc: Loc = ("eval", "datasets", name)
        if name in RESERVED_EVAL_NAMES:
            raise _invalid(loc, f"eval set name {name!r} is reserved")
        evals[name] = _resolve_dataset(session, catalog, owner_id, dataset_id, loc)

    _check_fits(spec, train, ("train_dataset_id",))
    for name, dataset in evals.items():
        _check_fits(spec, dataset, ("eval", "datasets", name))
    num_classes = _num_outputs(spec, train.summary.sample_shape)
    _validate_edit(body, train.summary, num_classes)


def _validate_edit(body: JobCreate, train: DatasetSummary, num_classes: int | None) -> None:
    edit = body.edit
    n = train.num_samples
    if isinstance(edit, RemoveClass):
        label_range = num_classes if num_classes is not None else train.num_classes
        if edit.class_ >= label_range:
            raise _invalid(
                ("edit", "class"),
                f"class {edit.class_} is outside the label range 0..{label_range - 1}",
            )
        count = train.class_counts[edit.class_] if edit.class_ < len(train.class_counts) else 0
        if count == 0:
            raise _invalid(("edit", "class"), f"class {edit.class_} has no training point")
        if count == n:
            raise _invalid(("edit", "class"), "removing this class would remove every point")
        return
    assert isinstance(edit, RemoveSamples | Relabel)
    for i, index in enumerate(edit.indices):
        if index >= n:
            raise _invalid(
                ("edit", "indices", i), f"index {index} is out of range (the dataset has {n})"
            )
    if len(edit.indices) >= n:
        raise _invalid(("edit", "indices"), "the edit would touch every training point")
    if isinstance(edit, Relabel):
        label_range = num_classes if num_classes is not None else train.num_classes
        for i, label in enumerate(edit.labels):
            if label >= label_range:
                raise _invalid(
                    ("edit", "labels", i),
                    f"label {label} is outside the label range 0..{label_range - 1}",
                )


# ------------------------------------------------------------------ submission


def _find_idempotent(
    session: Session, owner_id: str, key: str, digest: str
) -> Job | None:
    job = session.scalar(
        sa.select(Job).where(Job.owner_id == owner_id, Job.idempotency_key == key)
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
) -> tuple[JobOut, bool]:
    """Validate and insert the job; returns ``(job, created)`` — ``created`` False when the
    Idempotency-Key matched an earlier submission of the same body."""
    normalised = body.normalised()
    digest = request_hash(normalised)
    with factory() as session:
        if idempotency_key is not None:
            existing = _find_idempotent(session, owner_id, idempotency_key, digest)
            if existing is not None:
                return job_out(existing), False
        validate_job(session, catalog, owner_id, body)
        job = Job(
            owner_id=owner_id,
            status="queued",
            request=normalised,
            request_hash=digest,
            idempotency_key=idempotency_key,
            model_id=body.model_id,
            train_dataset_id=body.train_dataset_id,
        )
        session.add(job)
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
            return job_out(existing), False
        return job_out(job), True


def _withdraw(factory: sessionmaker[Session], job_id: str) -> None:
    """Remove a job the runner refused, so nothing waits that can never run."""
    with factory() as session:
        session.execute(sa.delete(Job).where(Job.id == job_id, Job.status == "queued"))
        session.commit()


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    summary="Submit an edit job",
    responses={
        200: {"model": JobOut, "description": "The job an earlier identical request created"},
        **problem_responses(413),
    },
)
async def create_job(
    body: JobCreate,
    request: Request,
    response: Response,
    owner: OwnerDep,
    factory: SessionFactoryDep,
    catalog: CatalogDep,
    dispatcher: DispatcherDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=255,
            description="Repeat a submission safely: same key + same body → the same job.",
        ),
    ] = None,
) -> JobOut:
    job, created = await run_in_threadpool(
        create_job_row, factory, catalog, owner.id, body, idempotency_key
    )
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if not created:
        response.status_code = 200
        return job
    try:
        await run_in_threadpool(dispatcher.submit, job.id)
    except Exception as err:
        await run_in_threadpool(_withdraw, factory, job.id)
        raise ProblemError(
            503,
            f"the job runner did not accept the job ({type(err).__name__}); retry later",
            slug="runner-unavailable",
        ) from None
    # Sent: tell the reaper not to send it again. Dying (or failing to write) here leaves the
    # job unmarked and the reaper sends it a second time: harmless, the worker claims it once.
    try:
        await run_in_threadpool(mark_enqueued, factory, job.id)
    except Exception:
        logger.warning("job %s was sent but not marked enqueued", job.id, exc_info=True)
    return job


def _owned_jobs(owner_id: str, status: str | None) -> sa.Select:
    query = sa.select(Job).where(Job.owner_id == owner_id)
    return query if status is None else query.where(Job.status == status)


@router.get("", response_model=Page[JobOut], summary="List jobs, newest first")
def list_jobs(
    owner: OwnerDep,
    session: SessionDep,
    page: PageDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state.")] = None,
) -> Page[JobOut]:
    rows, has_more = paginate(session, _owned_jobs(owner.id, status), Job, page)
    return Page[JobOut](data=[job_out(j) for j in rows], has_more=has_more)


@router.get(
    "/{job_id}", response_model=JobOut, summary="Get a job", responses=problem_responses(404)
)
def get_job(job_id: str, owner: OwnerDep, session: SessionDep) -> JobOut:
    return job_out(get_owned(session, Job, "job", owner.id, job_id))


def _next_seq(session: Session, job_id: str) -> int:
    last = session.scalar(sa.select(sa.func.max(JobEvent.seq)).where(JobEvent.job_id == job_id))
    return (last or 0) + 1


def cancel_job_row(session: Session, job: Job) -> Job:
    """Cancel: a queued job becomes ``cancelled`` at once; a running one gets
    ``cancel_requested`` and its worker stops at the next iteration; terminal jobs are left
    unchanged. Conditional UPDATEs make this safe against a worker racing to start it."""
    now = utcnow()
    became_cancelled = session.execute(
        sa.update(Job)
        .where(Job.id == job.id, Job.status == "queued")
        .values(
            status="cancelled",
            cancel_requested=True,
            finished_at=now,
        )
    ).rowcount
    if not became_cancelled:
        session.execute(
            sa.update(Job).where(Job.id == job.id, Job.status == "running").values(
                cancel_requested=True
            )
        )
    else:
        session.add(
            JobEvent(
                job_id=job.id,
                seq=_next_seq(session, job.id),
                at=now,
                level="info",
                phase=None,
                message="cancelled before it started",
                data=None,
            )
        )
    session.commit()
    session.refresh(job)
    return job


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    summary="Cancel a job (idempotent); returns the job",
    responses=problem_responses(404),
)
def cancel_job(job_id: str, owner: OwnerDep, session: SessionDep) -> JobOut:
    job = get_owned(session, Job, "job", owner.id, job_id)
    return job_out(cancel_job_row(session, job))


def _events_after(
    factory: sessionmaker[Session], job_id: str, after_seq: int
) -> tuple[list[JobEventOut], str]:
    with factory() as session:
        events = session.scalars(
            sa.select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.seq > after_seq)
            .order_by(JobEvent.seq)
        ).all()
        status = session.scalar(sa.select(Job.status).where(Job.id == job_id)) or "cancelled"
        return [JobEventOut.model_validate(e) for e in events], status


def _sse(event: str, data: str, event_id: int | None = None) -> str:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines += [f"data: {line}" for line in data.splitlines() or [""]]
    return "\n".join(lines) + "\n\n"


async def _event_stream(
    request: Request, factory: sessionmaker[Session], job_id: str, after_seq: int
) -> AsyncIterator[str]:
    """Server-sent events: every new event as ``event: job_event``, then one ``event: end``
    with the final status when the job is terminal. Polls the database every 0.5 s (a sleep,
    not a busy loop) and sends a comment line as keep-alive."""
    last_sent = time.monotonic()
    yield ": stream of job events\n\n"
    while True:
        events, status = await run_in_threadpool(_events_after, factory, job_id, after_seq)
        for event in events:
            after_seq = event.seq
            yield _sse("job_event", event.model_dump_json(), event.seq)
            last_sent = time.monotonic()
        if status in TERMINAL_STATUSES:
            # Events written just before the status flip were read above; re-check once so
            # none committed in between is lost.
            late, _ = await run_in_threadpool(_events_after, factory, job_id, after_seq)
            for event in late:
                yield _sse("job_event", event.model_dump_json(), event.seq)
            yield _sse("end", json.dumps({"status": status}))
            return
        if await request.is_disconnected():
            return
        if time.monotonic() - last_sent > SSE_KEEPALIVE_S:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(SSE_POLL_INTERVAL_S)


@router.get(
    "/{job_id}/events",
    response_model=list[JobEventOut],
    summary="The job's events; with Accept: text/event-stream, a live stream until it ends",
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "JSON list, or an SSE stream",
        },
        **problem_responses(404),
    },
)
async def job_events(
    job_id: str,
    request: Request,
    owner: OwnerDep,
    factory: SessionFactoryDep,
    accept: Annotated[str | None, Header()] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after_seq: Annotated[
        int, Query(ge=0, le=2**31 - 1, description="Only events with a larger seq.")
    ] = 0,
) -> Any:
    def check_owned() -> None:
        with factory() as session:
            get_owned(session, Job, "job", owner.id, job_id)

    await run_in_threadpool(check_owned)
    if accept is not None and "text/event-stream" in accept:
        start = int(last_event_id) if last_event_id and last_event_id.isdigit() else after_seq
        return StreamingResponse(
            _event_stream(request, factory, job_id, start),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    events, _ = await run_in_threadpool(_events_after, factory, job_id, after_seq)
    return events


@router.get(
    "/{job_id}/metrics",
    response_model=JobMetricsOut,
    summary="The job's metrics before and after the edit",
    responses=problem_responses(404, 409),
)
def job_metrics(job_id: str, owner: OwnerDep, session: SessionDep) -> JobMetricsOut:
    job = get_owned(session, Job, "job", owner.id, job_id)
    rows = session.scalars(sa.select(Metric).where(Metric.job_id == job.id)).all()
    stages: dict[str, dict[str, Any]] = {"before": {}, "after": {}}
    for row in rows:
        stage = stages.setdefault(row.stage, {})
        if row.dataset == SUMMARY_SET:
            # Scalars (score, retained_grad_norm, mia) sit at the stage's top level, exactly
            # as in the job's result.metrics: one shape for the same data.
            stage.update(row.values)
        else:
            stage[row.dataset] = row.values
    if not rows and job.result and isinstance(job.result.get("metrics"), dict):
        stages["before"] = job.result["metrics"].get("before") or {}
        stages["after"] = job.result["metrics"].get("after") or {}
    if not stages["before"] and not stages["after"]:
        raise ProblemError(
            409,
            f"job {job_id!r} has no metrics (status {job.status!r}); they exist once it succeeds",
            slug="no-metrics-yet",
        )
    return JobMetricsOut(job_id=job.id, before=stages["before"], after=stages["after"])


