"""The owners' webhook secrets and the signature of a delivery (Standard Webhooks: headers
``webhook-id``, ``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">``), made by the specification's reference library."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session
from standardwebhooks.webhooks import Webhook as StandardWebhook

from service.db.models import Owner

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # the specification allows 24 to 64


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def owner_secret(session: Session, owner_id: str) -> str:
    """The owner's secret, made (and committed) on first use."""
    secret = session.scalar(sa.select(Owner.webhook_secret).where(Owner.id == owner_id))
    if secret:
        return secret
    secret = new_secret()
    # Conditional: two processes making the first one at once agree on the winner's.
    session.execute(
        sa.update(Owner)
        .where(Owner.id == owner_id, Owner.webhook_secret.is_(None))
        .values(webhook_secret=secret)
    )
    session.commit()
    return session.scalar(sa.select(Owner.webhook_secret).where(Owner.id == owner_id)) or secret


def rotate_secret(session: Session, owner_name: str) -> str:
    """Replace the owner's secret (``gif-service webhooks rotate-secret``); attempts from now
    on, retries included, are signed with the new one. Raises LookupError for no such owner."""
    owner = session.scalar(sa.select(Owner).where(Owner.name == owner_name))
    if owner is None:
        raise LookupError(f"no owner named {owner_name!r}")
    owner.webhook_secret = new_secret()
    session.commit()
    return owner.webhook_secret


def signed_headers(secret: str, msg_id: str, at: datetime, body: str) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt sending ``body`` at ``at``."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": StandardWebhook(secret).sign(msg_id, at, body),
    }
