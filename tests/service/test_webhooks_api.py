"""Webhooks in-process (docs/api.md Jobs): which URLs a submission may name (SSRF), the echo, the
delivery log's shape and scoping, the secret, and the sender's rules — refused addresses at
delivery time, attempts running out, backoff — against a real receiver on 127.0.0.1."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from service.db.migrate import upgrade
from service.db.models import Job, WebhookSubscription
from service.db.session import session_scope
from service.settings import Settings
from service.webhooks.outbox import backoff_s
from service.webhooks.sender import WebhookSender
from tests.service.conftest import assert_problem
from tests.webhook_receiver import assert_signed, running_receiver


@pytest.fixture
def settings(tmp_path) -> Settings:
    """The route tests' settings, with the app's own webhook thread idle after its first
    pass (a minute between passes), so the tests' senders alone deliver."""
    settings = Settings(data_dir=tmp_path / "data", runner="none", max_upload_bytes=64 * 1024,
                        webhook_poll_interval_s=60)
    upgrade(settings)
    return settings


def body(uploaded, webhook) -> dict:
    return {"model_id": uploaded.model_id, "train_dataset_id": uploaded.dataset_id,
            "edit": {"kind": "remove_class", "class": 1}, "webhook": webhook}


@pytest.mark.parametrize("url", [
    "ftp://example.com/hook", "file:///etc/passwd", "gopher://example.com", "example.com/x",
    "http://", "https://user:pw@example.com/h", "http://example.com:99999/", "javascript:x",
    "http://127.0.0.1:8080/h", "http://localhost/h", "http://LOCALHOST./h", "http://a.localhost/",
    "http://10.1.2.3/h", "http://192.168.0.1/", "http://169.254.169.254/latest/meta-data",
    "http://[::1]:80/", "http://[fe80::1]/", "http://0.0.0.0/", "http://100.64.0.1/",
    "https://" + "a" * 2050 + ".com/",
])
def test_urls_a_webhook_may_not_name_are_422(client, alice, uploaded, url):
    response = client.post("/v1/jobs", headers=alice, json=body(uploaded, {"url": url}))
    assert_problem(response, 422)
    assert client.get("/v1/jobs", headers=alice).json()["data"] == []


@pytest.mark.parametrize("events", [[], ["finished"], ["running"] * 5, "succeeded"])
def test_bad_event_lists_are_422(client, alice, uploaded, events):
    webhook = {"url": "https://example.com/h", "events": events}
    assert_problem(client.post("/v1/jobs", headers=alice, json=body(uploaded, webhook)), 422)


def test_a_public_webhook_is_echoed_with_default_events_and_logged_per_owner(
    client, alice, bob, uploaded
):
    created = client.post("/v1/jobs", headers=alice,
                          json=body(uploaded, {"url": "https://example.com/h?x=1"}))
    assert created.status_code == 202, created.text
    job = created.json()
    assert job["webhook"] == {"url": "https://example.com/h?x=1",
                              "events": ["succeeded", "failed", "cancelled"]}
    assert client.get(f"/v1/jobs/{job['id']}", headers=alice).json()["webhook"] == job["webhook"]
    assert client.get(f"/v1/jobs/{job['id']}/webhooks", headers=alice).json() == []
    assert_problem(client.get(f"/v1/jobs/{job['id']}/webhooks", headers=bob), 404)
    plain = client.post("/v1/jobs", headers=alice, json={**body(uploaded, None)}).json()
    assert plain["webhook"] is None

    secret = client.get("/v1/webhooks/secret", headers=alice).json()["secret"]
    assert secret.startswith("whsec_") and len(secret) > 40
    assert client.get("/v1/webhooks/secret", headers=alice).json()["secret"] == secret
    assert client.get("/v1/webhooks/secret", headers=bob).json()["secret"] != secret
    assert_problem(client.get("/v1/webhooks/secret"), 401)


def _subscribed_job(session_factory, client, alice, uploaded, url: str) -> str:
    """A job subscribed to ``url`` written straight into the database (no submission check),
    then cancelled so a delivery is due."""
    job = client.post("/v1/jobs", headers=alice, json=body(uploaded, None)).json()
    with session_scope(session_factory) as session:
        row = session.get(Job, job["id"])
        session.add(WebhookSubscription(job_id=row.id, owner_id=row.owner_id, url=url,
                                        events=["cancelled"], planned=[]))
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice).status_code == 200
    return job["id"]


def _drain(sender: WebhookSender, until, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sender.tick()
        if until():
            return
        time.sleep(0.05)
    raise AssertionError("the sender did not get there")


def test_the_sender_refuses_private_addresses_at_delivery_and_gives_up_after_max_attempts(
    settings, session_factory, client, alice, uploaded
):
    with running_receiver() as receiver:
        receiver.default = 500
        refused_job = _subscribed_job(session_factory, client, alice, uploaded, receiver.url)
        strict = WebhookSender(session_factory, settings)  # private addresses not allowed
        _drain(strict, lambda: client.get(f"/v1/jobs/{refused_job}/webhooks",
                                          headers=alice).json()[0]["status"] == "failed")
        (log,) = client.get(f"/v1/jobs/{refused_job}/webhooks", headers=alice).json()
        assert len(log["attempts"]) == 1 and "GIF_WEBHOOK_ALLOW_PRIVATE" in log["attempts"][0][
            "error"]
        assert receiver.received == []  # refused before connecting

        failing_job = _subscribed_job(session_factory, client, alice, uploaded, receiver.url)
        lenient = Settings(**{**settings.model_dump(), "webhook_allow_private": True,
                              "webhook_max_attempts": 3, "webhook_retry_base_s": 0.05})
        sender = WebhookSender(session_factory, lenient)
        _drain(sender, lambda: client.get(f"/v1/jobs/{failing_job}/webhooks",
                                          headers=alice).json()[0]["status"] == "failed")
    (log,) = client.get(f"/v1/jobs/{failing_job}/webhooks", headers=alice).json()
    assert [a["status_code"] for a in log["attempts"]] == [500, 500, 500]
    assert log["finished_at"] and log["next_attempt_at"] is None
    assert len(receiver.received) == 3
    secret = client.get("/v1/webhooks/secret", headers=alice).json()["secret"]
    payloads = [assert_signed(r, secret) for r in receiver.received]
    assert {p["type"] for p in payloads} == {"job.cancelled"}
    # Planned once: more passes plan nothing new.
    sender.tick()
    with session_factory() as session:
        assert session.scalar(sa.text("SELECT count(*) FROM webhook_deliveries")) == 2


def test_backoff_doubles_and_is_capped():
    assert [backoff_s(n, 5.0) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]
    assert backoff_s(40, 5.0) == 3600.0


def test_erasing_a_job_erases_its_metadata_and_webhook_deliveries(
    client, alice, uploaded, session_factory
):
    from service.db.models import WebhookDelivery
    from service.webhooks.outbox import plan

    job = client.post("/v1/jobs", headers=alice, json={
        **body(uploaded, {"url": "https://example.com/h"}), "metadata": {"ticket": "GDPR-9"}},
    ).json()
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice)
    assert plan(session_factory) == 1  # a delivery whose body echoes the metadata
    assert len(client.get(f"/v1/jobs/{job['id']}/webhooks", headers=alice).json()) == 1
    assert client.delete(f"/v1/jobs/{job['id']}", headers=alice).status_code == 204
    with session_factory() as session:
        row = session.get(Job, job["id"])
        assert not row.job_metadata and row.edit_summary is None
        assert session.scalar(sa.select(sa.func.count()).select_from(WebhookDelivery)
                              .where(WebhookDelivery.job_id == job["id"])) == 0
        assert session.get(WebhookSubscription, job["id"]) is None
    listed = client.get("/v1/jobs?metadata[ticket]=GDPR-9", headers=alice).json()
    assert listed["data"] == []
