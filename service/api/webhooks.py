"""Webhook routes (docs/api.md Jobs): a job's delivery log and the owner's signing secret; and
the submission-time check of a webhook's host."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from service.api.common import AUTH_PROBLEMS, get_owned, problem_responses
from service.api.deps import OwnerDep, SessionDep
from service.db.models import Job
from service.problems import validation_problem
from service.schemas import Webhook, WebhookAttempt, WebhookDeliveryOut
from service.settings import Settings
from service.webhooks.addresses import AddressRefused, check_written
from service.webhooks.outbox import deliveries_of
from service.webhooks.signing import owner_secret

router = APIRouter(prefix="/v1", tags=["webhooks"], responses=AUTH_PROBLEMS)


class WebhookSecretOut(BaseModel):
    secret: str = Field(
        description="Verify deliveries with it (Standard Webhooks: HMAC-SHA256 of "
                    "`{webhook-id}.{webhook-timestamp}.{body}`, base64, keyed by the base64 "
                    "part after `whsec_`). Rotated by the operator: `gif-service webhooks "
                    "rotate-secret --owner NAME`.",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )


def refuse_webhook_host(webhook: Webhook, settings: Settings) -> None:
    """422 for a webhook whose host, as written, is private (unless the operator allows)."""
    try:
        check_written(webhook.url, settings.webhook_allow_private)
    except AddressRefused as err:
        raise validation_problem(str(err), [(("body", "webhook", "url"), str(err))]) from None


@router.get(
    "/jobs/{job_id}/webhooks",
    response_model=list[WebhookDeliveryOut],
    summary="The job's webhook deliveries, oldest first, each with its attempts",
    responses=problem_responses(404),
)
def job_webhooks(job_id: str, owner: OwnerDep, session: SessionDep) -> list[WebhookDeliveryOut]:
    job = get_owned(session, Job, "job", owner.id, job_id)
    return [
        WebhookDeliveryOut(
            id=d.id, event=d.event, url=d.url, status=d.status,  # type: ignore[arg-type]
            created_at=d.created_at, finished_at=d.finished_at,
            next_attempt_at=d.next_attempt_at,
            attempts=[WebhookAttempt.model_validate(a) for a in d.attempts],
        )
        for d in deliveries_of(session, job.id)
    ]


@router.get(
    "/webhooks/secret",
    response_model=WebhookSecretOut,
    summary="Your webhook signing secret (made on first use)",
)
def webhook_secret(owner: OwnerDep, session: SessionDep) -> WebhookSecretOut:
    return WebhookSecretOut(secret=owner_secret(session, owner.id))
