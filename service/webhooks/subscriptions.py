"""A job's webhook subscription: stored in the submission's transaction, echoed in the job."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import make_transient_to_detached

from service.db.models import Job, WebhookSubscription, utcnow
from service.schemas import Webhook

_INSERT_SUBSCRIPTION = sa.insert(WebhookSubscription)


def subscribe(connection: sa.Connection, job: Job, webhook: Webhook | None) -> None:
    """Store ``webhook`` for the new ``job`` (inserted on ``connection``, committed with the
    job) and set it on the job object (detached, as stored). Set even when None, so the job's
    echo never needs a lazy load once its session is closed."""
    if webhook is None:
        job.webhook_subscription = None
        return
    values = {"job_id": job.id, "owner_id": job.owner_id, "url": webhook.url,
              "events": list(webhook.events), "planned": [], "done": False,
              "created_at": utcnow()}
    connection.execute(_INSERT_SUBSCRIPTION, values)
    subscription = WebhookSubscription(**values)
    make_transient_to_detached(subscription)
    job.webhook_subscription = subscription


def webhook_of(job: Job) -> Webhook | None:
    """The job's ``webhook`` as it was submitted (None without one)."""
    subscription = job.webhook_subscription
    if subscription is None:
        return None
    return Webhook(url=subscription.url, events=subscription.events)
