"""The job summary (docs/api.md Limits): what lists and webhook deliveries show of a job,
bounded whatever its request holds, read from the columns written at submission (``method``,
``edit_summary``, ``metadata``), never from ``request`` or ``result``."""

from __future__ import annotations

from typing import Any

from service.db.models import Job
from service.schemas import EditSummary, JobCreate, JobError, JobSummary


def edit_summary(edit: dict[str, Any]) -> dict[str, Any]:
    """The edit without its point lists: its kind and class, or how many points it names."""
    if "indices" in edit:
        return {"kind": edit.get("kind"), "count": len(edit["indices"])}
    return {"kind": edit.get("kind"), "class": edit.get("class")}


def list_columns(body: JobCreate, normalised: dict[str, Any]) -> dict[str, Any]:
    """The job row's columns that lists read, from a submission."""
    return {
        "method": normalised["method"],
        "edit_summary": edit_summary(normalised["edit"]),
        "job_metadata": dict(body.metadata),
    }


def job_summary(job: Job) -> JobSummary:
    return JobSummary(
        id=job.id,
        status=job.status,  # type: ignore[arg-type]
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        model_id=job.model_id,
        train_dataset_id=job.train_dataset_id,
        method=job.method,
        edit=EditSummary.model_validate(job.edit_summary) if job.edit_summary else None,
        metadata=job.job_metadata or {},
        progress=job.progress,
        error=JobError.model_validate(job.error) if job.error else None,
        edited_model_id=job.edited_model_id,
        cancel_requested=job.cancel_requested,
    )
