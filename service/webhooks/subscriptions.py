"""A job's webhook subscription: stored in the submission's transaction, echoed in the job."""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.db.models import Job, WebhookSubscription
from service.schemas import Webhook


def subscribe(session: Session, job: Job, webhook: Webhook | None) -> None:
    """Store ``webhook`` for the new ``job`` (added to ``session``, committed with it). Set
    even when None, so the job's echo never needs a lazy load once its session is closed."""
    if webhook is None:
        job.webhook_subscription = None
        return
    job.webhook_subscription = WebhookSubscription(
        owner_id=job.owner_id, url=webhook.url, events=list(webhook.events), planned=[]
    )


def webhook_of(job: Job) -> Webhook | None:
    """The job's ``webhook`` as it was submitted (None without one)."""
    subscription = job.webhook_subscription
    if subscription is None:
        return None
    return Webhook(url=subscription.url, events=subscription.events)
