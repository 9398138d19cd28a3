"""The job summary (docs/api.md Limits): what lists and webhook deliveries show of a job,
bounded whatever its request holds, read from the columns written at submission (``method``,
``edit_summary``, ``metadata``), never from ``request`` or ``result``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.db.models import Job
from service.schemas import EditSummary, JobCreate, JobSummary


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


# The columns of ``jobs`` a summary shows, by column name (``metadata`` is the ORM's
# ``job_metadata``: ``metadata`` is taken on a declarative class).
SUMMARY_COLUMNS = ("id", "status", "created_at", "started_at", "finished_at", "model_id",
                   "train_dataset_id", "method", "edit_summary", "metadata", "progress",
                   "error", "edited_model_id", "cancel_requested")


def summary_fields(job: Mapping[str, Any]) -> dict[str, Any]:
    """The fields the job summary and the job object (:func:`service.jobs.view.job_object`)
    share, from the job's columns by name: a Core row, an insert's values, or an ORM job's."""
    edit = job["edit_summary"]
    return {
        **{name: job[name] for name in SUMMARY_COLUMNS
           if name not in ("edit_summary", "metadata")},
        "edit": EditSummary.model_validate(edit) if edit else None,
        "metadata": job["metadata"] or {},
    }


def job_summary(job: Job) -> JobSummary:
    """The summary of an ORM job (its ``request`` and ``result`` need not be loaded)."""
    columns = {name: getattr(job, "job_metadata" if name == "metadata" else name)
               for name in SUMMARY_COLUMNS}
    return JobSummary(**summary_fields(columns))
