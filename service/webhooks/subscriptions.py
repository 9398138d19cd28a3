"""A job's webhook subscription: stored in the submission's transaction, echoed in the job."""

from __future__ import annotations

import sqlalchemy as sa

from service.db.models import WebhookSubscription, utcnow
from service.schemas import Webhook

_INSERT_SUBSCRIPTION = sa.insert(WebhookSubscription)  # built once: a submission's statement


def subscribe(
    connection: sa.Connection, job_id: str, owner_id: str, webhook: Webhook
) -> Webhook:
    """Store ``webhook`` for the new job ``job_id`` (inserted on ``connection``, committed
    with the job); returns it as the job object echoes it."""
    events = list(webhook.events)
    connection.execute(_INSERT_SUBSCRIPTION, {
        "job_id": job_id, "owner_id": owner_id, "url": webhook.url, "events": events,
        "planned": [], "done": False, "created_at": utcnow(),
    })
    return Webhook(url=webhook.url, events=events)
