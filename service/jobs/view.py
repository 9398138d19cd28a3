"""The job object (docs/api.md, :class:`~service.schemas.JobOut`) read without ORM objects:
what ``GET /v1/jobs/{id}``, a submission's answer and cancel's answer show.

A stored job is one prebuilt Core query (its webhook subscription joined) on a plain
connection — an ORM load of the row and its subscription cost four times as much, on every
request of the hottest routes; a job just inserted is built from the values written, never read
back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from service.db.models import Job, WebhookSubscription
from service.db.owned import find_owned_columns, owned_columns
from service.jobs.summary import summary_fields
from service.schemas import JobOut, Webhook

# Built once: the columns of the job object, by the names job_object() reads (the column names
# of ``jobs``: an insert's values read the same).
JOB_OBJECT = owned_columns(
    Job, Job.id, Job.status, Job.created_at, Job.started_at, Job.finished_at, Job.request,
    Job.progress, Job.error, Job.result, Job.model_id, Job.train_dataset_id,
    Job.edited_model_id, Job.cancel_requested, Job.method, Job.edit_summary,
    Job.job_metadata.label("metadata"), WebhookSubscription.url.label("webhook_url"),
    WebhookSubscription.events.label("webhook_events"),
).outerjoin(WebhookSubscription, WebhookSubscription.job_id == Job.id)


def job_object(job: Mapping[str, Any], webhook: Webhook | None) -> JobOut:
    """The job object of ``job`` — a row of :data:`JOB_OBJECT`, or the values of the job's
    insert (keyed by the columns of ``jobs``) — and its webhook."""
    return JobOut(**summary_fields(job), request=job["request"], result=job["result"],
                  webhook=webhook)


def read_job_object(db: sa.Connection, owner_id: str, job_id: str) -> JobOut | None:
    """The owner's job ``job_id`` as served; None when it is missing, another owner's or
    erased."""
    row = find_owned_columns(db, JOB_OBJECT, owner_id, job_id)
    if row is None:
        return None
    webhook = (Webhook(url=row.webhook_url, events=row.webhook_events)
               if row.webhook_url is not None else None)
    return job_object(row._mapping, webhook)
