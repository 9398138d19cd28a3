"""The job report and its figures (README.md, "Job report").

- ``GET /v1/jobs/{id}/report`` — a self-contained HTML page (``service.report``): every job
  has one (unfinished and failed jobs show status, progress and error, without figures).
- ``GET /v1/jobs/{id}/plots/{name}.png`` — one figure of a succeeded job as PNG; ``name`` is
  a key of the figure registry ``gif.plots.PLOTS`` (the page shows the same figures, drawn
  from the same ``service.report.figure_data``). 404 for an unknown name, a job without a
  result, or a figure the result has no data for.

A report is judged against retraining where it can be: the newest succeeded ``retrain`` job
of the same owner on the same model, training data and edit is the page's reference.

Both are owner-scoped like every job route (another owner's job answers 404) and render in
the thread pool (plain ``def`` handlers): matplotlib must not block the event loop. A
succeeded job's result never changes, so a figure's ETag is a hash of the result, the figure
name and the code version; a matching ``If-None-Match`` answers 304 without drawing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from importlib import metadata
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from service.api.common import get_owned, problem_responses
from service.api.deps import OwnerDep, SessionDep
from service.db.models import Job, Model
from service.erasure import erased_inputs_of
from service.problems import ProblemError
from service.report import CONTENT_SECURITY_POLICY, figure_data, render_plots, render_report

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
logger = logging.getLogger(__name__)

PNG_MEDIA_TYPE = "image/png"
# A terminal job's figures are immutable for a given code version; private: they need a key.
PLOT_CACHE_CONTROL = "private, max-age=86400"


def _code_version() -> str:
    try:
        return metadata.version("gif-service")
    except metadata.PackageNotFoundError:  # running from a tree that is not installed
        return "0"


def job_as_dict(job: Job) -> dict[str, Any]:
    """The API job object (api.md) of ``job``, JSON-ready."""

    def iso(value):
        return value.isoformat() if value is not None else None

    return {
        "id": job.id,
        "status": job.status,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "request": job.request,
        "progress": job.progress,
        "error": job.error,
        "result": job.result,
        "model_id": job.model_id,
        "train_dataset_id": job.train_dataset_id,
        "edited_model_id": job.edited_model_id,
    }


def _model_summary(session, owner_id: str, model_id: str | None) -> dict[str, Any] | None:
    """id/name/arch of a model of this owner (a soft-deleted one still has its name)."""
    if not model_id:
        return None
    model = session.get(Model, model_id)
    if model is None or model.owner_id != owner_id:
        return {"id": model_id}
    return {"id": model.id, "name": model.name, "arch": model.arch}


# How many of the newest succeeded jobs on the same model and data are searched for a retrain.
REFERENCE_CANDIDATES = 50


def retrain_reference(session, job: Job) -> dict[str, Any] | None:
    """``{"job_id", "metrics"}`` (after-metrics) of the newest succeeded ``retrain`` job of
    ``job``'s owner on the same model, training data and edit; None when there is none."""
    request = job.request or {}
    if request.get("method") == "retrain" or not request.get("edit"):
        return None
    candidates = session.scalars(
        sa.select(Job)
        .where(Job.owner_id == job.owner_id, Job.model_id == job.model_id,
               Job.train_dataset_id == job.train_dataset_id, Job.status == "succeeded",
               Job.id != job.id)
        .order_by(Job.created_at.desc())
        .limit(REFERENCE_CANDIDATES)
    )
    for other in candidates:
        other_request = other.request or {}
        after = ((other.result or {}).get("metrics") or {}).get("after")
        if (other_request.get("method") == "retrain"
                and other_request.get("edit") == request["edit"] and after):
            return {"job_id": other.id, "metrics": after}
    return None


def erased_inputs(session, job: Job) -> list[dict[str, Any]]:
    """The job's inputs erased since it ran (``service.erasure``), for the report's line."""
    request = {**(job.request or {}), "model_id": job.model_id,
               "train_dataset_id": job.train_dataset_id}
    return [{"kind": r.kind, "id": r.object_id, "name": r.name,
             "erased_at": r.created_at.isoformat(), "reason": r.reason}
            for r in erased_inputs_of(session, job.owner_id, request)]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _etag(*parts: str) -> str:
    return '"' + hashlib.sha256("\x00".join(parts).encode()).hexdigest() + '"'


def _matches(request: Request, etag: str) -> bool:
    header = request.headers.get("if-none-match", "")
    candidates = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return etag in candidates or "*" in candidates


@router.get(
    "/{job_id}/report",
    response_class=HTMLResponse,
    summary="The job's self-contained HTML report",
    responses={200: {"content": {"text/html": {}}, "description": "The report page"},
               304: {"description": "Not modified"},
               **problem_responses(401, 404, 503)},
)
def job_report(job_id: str, request: Request, owner: OwnerDep, session: SessionDep) -> Response:
    """Request, timings, solver diagnostics, metrics before/after and the figures of the job,
    in one HTML page with no external assets (CSS inline, figures as data: URIs). A job that
    has not succeeded shows its status, progress and error instead of figures."""
    job = get_owned(session, Job, "job", owner.id, job_id)
    document = job_as_dict(job)
    models = {
        "source": _model_summary(session, owner.id, job.model_id),
        "edited": _model_summary(session, owner.id, job.edited_model_id),
    }
    models = {k: v for k, v in models.items() if v}
    reference = retrain_reference(session, job) if job.status == "succeeded" else None
    erased = erased_inputs(session, job)
    # The page is a function of the job object, the model names, the retrain reference, the
    # erasures of its inputs and the code: hash those, so a matching If-None-Match answers 304
    # without drawing figures.
    etag = _etag(_code_version(), _canonical(document), _canonical(models),
                 (reference or {}).get("job_id") or "", _canonical(erased))
    headers = {
        "ETag": etag,
        "Cache-Control": "private, no-cache",  # a running job's page changes: revalidate
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
    }
    if _matches(request, etag):
        return Response(status_code=304, headers=headers)
    plots = (render_plots(job.result, job.request)
             if job.status == "succeeded" and job.result else {})
    page = render_report(document, plots=plots, models=models, reference=reference,
                         erased=erased)
    return HTMLResponse(page, headers=headers)


@router.get(
    "/{job_id}/plots/{name}.png",
    response_class=Response,
    summary="One figure of a succeeded job, as PNG",
    responses={200: {"content": {PNG_MEDIA_TYPE: {"schema": {"type": "string",
                                                               "format": "binary"}}},
                     "description": "The figure"},
               304: {"description": "Not modified"},
               **problem_responses(401, 404, 503)},
)
def job_plot(job_id: str, name: str, request: Request, owner: OwnerDep,
             session: SessionDep) -> Response:
    """``name``: a figure of the registry, e.g. ``convergence`` (solver residuals),
    ``scale`` (step-size curve), ``per_class`` (per-class accuracy before/after),
    ``per_layer`` (parameters changed and update norm per layer), ``training`` (a training
    method's loss curve)."""
    from gif.plots import PLOTS, MissingPlotData

    job = get_owned(session, Job, "job", owner.id, job_id)
    if name not in PLOTS:
        raise ProblemError(404, f"no plot named {name!r}; plots: {', '.join(sorted(PLOTS))}",
                           slug="not-found")
    if job.status != "succeeded" or not job.result:
        raise ProblemError(404, f"job {job_id!r} has no result to plot (status {job.status})",
                           slug="not-found")
    etag = _etag(job.id, name, _code_version(), _canonical(job.result))
    headers = {"ETag": etag, "Cache-Control": PLOT_CACHE_CONTROL,
               "X-Content-Type-Options": "nosniff"}
    if _matches(request, etag):
        return Response(status_code=304, headers=headers)
    try:
        png = PLOTS[name](figure_data(job.request, job.result))
    except MissingPlotData as missing:
        raise ProblemError(404, f"job {job_id!r}: {missing}", slug="not-found") from missing
    except (KeyError, TypeError, ValueError, IndexError) as malformed:
        # A result of another shape (older engine): no figure, but never a 500.
        logger.warning("plot %r of job %s could not be drawn", name, job_id, exc_info=True)
        raise ProblemError(404, f"job {job_id!r}: its result has no usable data for {name!r}",
                           slug="not-found") from malformed
    return Response(png, media_type=PNG_MEDIA_TYPE, headers=headers)
