"""``/v1/jobs``: submit, list, get, cancel, events (JSON or live SSE), metrics — routes only:
every change of a job row is made by :mod:`service.jobs` (the row is the source of truth; the
dispatcher is only told "job X waits")."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.sse import EventSourceResponse, format_sse_event
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from gif.request import Method
from service.api.common import AUTH_PROBLEMS, get_owned, paginate, problem_responses
from service.api.deps import (
    OwnerDep,
    PageDep,
    SessionDep,
    SessionFactoryDep,
    app_dispatcher,
)
from service.api.erasures import erase_by_request
from service.api.job_lists import (
    METADATA_PARAMETER,
    JobFilters,
    job_summary,
    metadata_filters,
    summary_query,
)
from service.api.webhooks import refuse_webhook_host
from service.db.models import SUMMARY_SET, TERMINAL_STATUSES, Job, Metric
from service.db.session import read_once
from service.jobs.events import events_after
from service.jobs.state import cancel_job
from service.jobs.submit import submit_job
from service.jobs.view import read_job_object
from service.problems import ProblemError, not_found, validation_problem
from service.schemas import (
    JobCreate,
    JobEventOut,
    JobMetricsOut,
    JobOut,
    JobStatus,
    JobSummary,
    Page,
)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=AUTH_PROBLEMS)

MAX_SEQ = 2**31 - 1  # event seqs are 32-bit integers in the database
SSE_POLL_INTERVAL_S = 0.5
SSE_KEEPALIVE_S = 15.0


def read_job(engine: sa.Engine, owner_id: str, job_id: str) -> JobOut:
    """The owner's job as served, or 404."""
    with engine.connect() as connection:
        job = read_job_object(connection, owner_id, job_id)
    if job is None:
        raise not_found("job", job_id)
    return job


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    summary="Submit an edit job",
    responses={
        200: {"model": JobOut, "description": "The job an earlier identical request created"},
        **problem_responses(413, 429),
    },
)
async def create_job(
    body: JobCreate,
    request: Request,
    response: Response,
    owner: OwnerDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=255,
            description="Repeat a submission safely: same key + same body → the same job.",
        ),
    ] = None,
) -> JobOut:
    # The app's parts are read from its state here, not as four more dependencies: FastAPI's
    # solving of each costs more than the read (this route is the one on the hot path).
    state = request.app.state
    settings = state.settings
    dispatcher = app_dispatcher(request)
    if body.webhook is not None:
        refuse_webhook_host(body.webhook, settings)
    job, created = await run_in_threadpool(
        submit_job, state.session_factory, state.catalog, dispatcher, owner.id, body,
        idempotency_key, settings,
    )
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if not created:
        response.status_code = 200
    return job


@router.get(
    "",
    response_model=Page[JobSummary],
    summary="List jobs (summaries), newest first",
    description="Job summaries: the full `request` and `result` come with GET /v1/jobs/{id}. "
                "Filters combine with AND.",
    openapi_extra={"parameters": [METADATA_PARAMETER]},
)
def list_jobs(
    request: Request,
    owner: OwnerDep,
    session: SessionDep,
    page: PageDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state.")] = None,
    model_id: Annotated[
        str | None, Query(max_length=100, description="Only jobs editing this model.")
    ] = None,
    method: Annotated[Method | None, Query(description="Only jobs of this method.")] = None,
) -> Page[JobSummary]:
    filters = JobFilters(status, model_id, method, metadata_filters(request.query_params))
    window = paginate(session, summary_query(owner.id, filters), Job, page, owner.id)
    return Page[JobSummary](data=[job_summary(j) for j in window.rows],
                            has_more=window.has_more, next_cursor=window.next_cursor)


@router.get(
    "/{job_id}", response_model=JobOut, summary="Get a job", responses=problem_responses(404)
)
async def get_job(job_id: str, request: Request, owner: OwnerDep) -> JobOut:
    # one statement, on SQLite on the loop's own connection (``read_once``): a ``def`` route
    # with a session dependency took three thread hops
    state = request.app.state
    job = await read_once(state.loop_reader, state.read_engine, read_job_object, owner.id,
                          job_id)
    if job is None:
        raise not_found("job", job_id)
    return job


@router.delete(
    "/{job_id}",
    status_code=204,
    summary="Erase a terminal job: its request, result, events, metrics and figures go "
    "(its edited model stays, as a model)",
    responses=problem_responses(404, 409),
)
async def delete_job(job_id: str, request: Request, owner: OwnerDep) -> Response:
    """409 while the job is queued or running: cancel it first (service.erasure)."""
    await erase_by_request(request, "job", owner, job_id)
    return Response(status_code=204)


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    summary="Cancel a job (idempotent); returns the job",
    responses=problem_responses(404),
)
def cancel(job_id: str, request: Request, owner: OwnerDep, factory: SessionFactoryDep) -> JobOut:
    engine = request.app.state.read_engine
    read_job(engine, owner.id, job_id)  # 404 before any change
    cancel_job(factory, job_id)
    return read_job(engine, owner.id, job_id)


async def _read_events(
    factory: sessionmaker[Session], job_id: str, after_seq: int
) -> tuple[list[JobEventOut], str]:
    rows, status = await run_in_threadpool(events_after, factory, job_id, after_seq)
    return [JobEventOut.model_validate(row) for row in rows], status


def _sse(event: str, data: str, event_id: int | None = None) -> bytes:
    """One SSE message, framed by FastAPI's own encoder: it splits ``data`` only on the
    standard's line ends (CR, LF, CRLF), so a U+2028, U+2029 or U+0085 inside an event's JSON
    stays in its line (``str.splitlines`` would split there and break the JSON)."""
    return format_sse_event(
        event=event, data_str=data, id=None if event_id is None else str(event_id)
    )


def _sse_comment(text: str) -> bytes:
    return format_sse_event(comment=text)


async def _event_stream(
    request: Request, factory: sessionmaker[Session], job_id: str, after_seq: int
) -> AsyncIterator[bytes]:
    """Server-sent events: every new event as ``event: job_event``, then one ``event: end``
    with the final status when the job is terminal. Polls the database every 0.5 s (a sleep,
    not a busy loop) and sends a comment line as keep-alive."""
    last_sent = time.monotonic()
    yield _sse_comment("stream of job events")
    while True:
        events, status = await _read_events(factory, job_id, after_seq)
        for event in events:
            after_seq = event.seq
            yield _sse("job_event", event.model_dump_json(), event.seq)
            last_sent = time.monotonic()
        if status in TERMINAL_STATUSES:
            # Events written just before the status flip were read above; re-check once so
            # none committed in between is lost.
            late, _ = await _read_events(factory, job_id, after_seq)
            for event in late:
                yield _sse("job_event", event.model_dump_json(), event.seq)
            yield _sse("end", json.dumps({"status": status}))
            return
        if await request.is_disconnected():
            return
        if time.monotonic() - last_sent > SSE_KEEPALIVE_S:
            yield _sse_comment("keep-alive")
            last_sent = time.monotonic()
        await asyncio.sleep(SSE_POLL_INTERVAL_S)


def _resume_after(last_event_id: str) -> int:
    """The seq a reconnecting client saw last (the ``id:`` of our messages): a seq, or 422 —
    never a number the database cannot compare (a 64-bit overflow would fail mid-stream)."""
    value = last_event_id.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 10 or int(value) > MAX_SEQ:
        raise validation_problem(
            f"Last-Event-ID must be an event seq, an integer 0..{MAX_SEQ}",
            [(("header", "Last-Event-ID"), "not an event seq")],
        )
    return int(value)


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
        int, Query(ge=0, le=MAX_SEQ, description="Only events with a larger seq.")
    ] = 0,
) -> Any:
    def check_owned() -> None:
        with factory() as session:
            get_owned(session, Job, "job", owner.id, job_id)

    await run_in_threadpool(check_owned)
    if accept is not None and "text/event-stream" in accept:
        start = after_seq if last_event_id is None else _resume_after(last_event_id)
        return EventSourceResponse(
            _event_stream(request, factory, job_id, start),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    events, _ = await _read_events(factory, job_id, after_seq)
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


