"""Webhooks through a live ``gif-service serve`` and a real receiving HTTP server on
127.0.0.1 (docs/api.md Jobs): every delivery signed the Standard Webhooks way (checked with the
specification's reference library and with an independent HMAC written here), a delivery
retried after a 500 with the same ``webhook-id``, the attempts listed under the job, and no
delivery lost across a restart of the API — neither one that was failing when it stopped nor
a status change made while no API was up."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.live_server import LiveServer, live_server, run_cli, service_env
from tests.reliability.helpers import upload_dataset, upload_model, wait_job, wait_until
from tests.webhook_receiver import Receiver, assert_signed, running_receiver
from tests.worker import digits

FAST_WEBHOOKS = {
    "GIF_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver is on 127.0.0.1
    "GIF_WEBHOOK_POLL_INTERVAL_S": "0.2",
    "GIF_WEBHOOK_RETRY_BASE_S": "0.3",
    "GIF_LOG_LEVEL": "info",
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as state:
        yield state


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


def start(data_dir: Path, **extra: str):
    env = service_env(data_dir, extra={**FAST_WEBHOOKS, **extra})
    return live_server(data_dir, env=env, startup_timeout=180)


def deliveries(client, job_id: str) -> list[dict]:
    response = client.get(f"/v1/jobs/{job_id}/webhooks")
    assert response.status_code == 200, response.text
    return response.json()


def submit(client, model: dict, dataset: dict, request: dict, webhook: dict) -> dict:
    body = {"model_id": model["id"], "train_dataset_id": dataset["id"], **request,
            "webhook": webhook, "metadata": {"suite": "webhooks"}}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    assert response.json()["webhook"] == webhook
    return response.json()


QUEUED_ONLY = {"edit": {"kind": "remove_class", "class": 3}}


def test_a_real_job_delivers_running_and_succeeded_signed_and_a_500_is_retried(
    data_dir, receiver, upload_files
):
    receiver.script = [500]  # the first delivery's first attempt fails
    with start(data_dir) as server:
        client = server.client(timeout=300)
        model = upload_model(client, upload_files.model)
        dataset = upload_dataset(client, upload_files.data)
        secret = client.get("/v1/webhooks/secret").json()["secret"]
        assert secret.startswith("whsec_")
        request = digits.quick_request({"kind": "remove_class", "class": 3},
                                       solver={"max_iter": 5}, step={"mode": "fixed"})
        job = submit(client, model, dataset, request,
                     {"url": receiver.url, "events": ["running", "succeeded"]})
        assert wait_job(server, client, job["id"])["status"] == "succeeded"
        log = wait_until(lambda: (d := deliveries(client, job["id"])) and len(d) == 2
                         and all(x["status"] == "delivered" for x in d) and d, 60,
                         "both deliveries delivered")

    # A tiny job can end within one outbox poll, so both deliveries may be planned together
    # and either can reach the receiver first (api.md: order by data.status, not arrival):
    # the scripted 500 answers whichever does.
    assert sorted(d["event"] for d in log) == ["running", "succeeded"]
    retried = next(d for d in log if len(d["attempts"]) == 2)
    (once,) = (d for d in log if d is not retried)
    assert [a["status_code"] for a in retried["attempts"]] == [500, 200]
    assert retried["attempts"][0]["error"] and retried["attempts"][1]["error"] is None
    assert [a["status_code"] for a in once["attempts"]] == [200]

    got = receiver.for_job(job["id"])
    by_id = {d["id"]: [r for r in got if r.headers["webhook-id"] == d["id"]] for d in log}
    assert [r.answered for r in by_id[retried["id"]]] == [500, 200]
    assert [r.answered for r in by_id[once["id"]]] == [200] and len(got) == 3
    first, retry = by_id[retried["id"]]
    assert first.body == retry.body  # a retry sends the same body, freshly signed
    assert retry.at - first.at >= 0.25  # the backoff (0.3 s) was waited
    payloads = {d["event"]: [assert_signed(r, secret) for r in by_id[d["id"]]] for d in log}
    assert {p["type"] for p in payloads["running"]} == {"job.running"}
    assert {p["type"] for p in payloads["succeeded"]} == {"job.succeeded"}
    final = payloads["succeeded"][-1]
    assert final["data"]["id"] == job["id"]
    assert final["data"]["status"] == "succeeded" and final["data"]["edited_model_id"]
    assert final["data"]["metadata"] == {"suite": "webhooks"} and "request" not in final["data"]


def test_no_delivery_is_lost_across_an_api_restart_nor_signed_with_a_rotated_secret(
    data_dir, receiver, upload_files
):
    receiver.default = 503  # the receiver is down at first
    with start(data_dir, GIF_RUNNER="none") as server:
        client = server.client(timeout=300)
        model = upload_model(client, upload_files.model)
        dataset = upload_dataset(client, upload_files.data)
        hook = {"url": receiver.url, "events": ["succeeded", "cancelled"]}
        failing = submit(client, model, dataset, QUEUED_ONLY, hook)
        later = submit(client, model, dataset, QUEUED_ONLY, hook)
        assert client.post(f"/v1/jobs/{failing['id']}/cancel").status_code == 200
        wait_until(lambda: len(receiver.for_job(failing["id"])) >= 2, 30,
                   "two failed attempts before the restart")
        old = client.get("/v1/webhooks/secret").json()["secret"]
        owner = _owner_name(server)
    before_restart = len(receiver.received)
    # While no API runs, the job finishes (as a worker would write it), and the operator
    # rotates the owner's secret.
    with sqlite3.connect(data_dir / "gif.db") as db:
        db.execute("UPDATE jobs SET status='succeeded', started_at=?, finished_at=? "
                   "WHERE id=?", (_now(), _now(), later["id"]))
    printed = run_cli(["webhooks", "rotate-secret", "--owner", owner],
                      service_env(data_dir, extra=FAST_WEBHOOKS))
    secret = printed.strip().splitlines()[-1]
    assert secret.startswith("whsec_") and secret != old
    receiver.default = 200
    with start(data_dir, GIF_RUNNER="none") as server:
        client = server.client()
        for job in (failing, later):
            wait_until(lambda job=job: [d["status"] for d in deliveries(client, job["id"])]
                       == ["delivered"], 30, f"the delivery of {job['id']}")
        failing_log = deliveries(client, failing["id"])[0]
        later_log = deliveries(client, later["id"])[0]
        assert client.get("/v1/webhooks/secret").json()["secret"] == secret
    codes = [a["status_code"] for a in failing_log["attempts"]]
    assert codes[-1] == 200 and set(codes[:-1]) == {503} and len(codes) >= 3
    assert (failing_log["event"], later_log["event"]) == ("cancelled", "succeeded")
    got = receiver.for_job(failing["id"])
    assert {r.headers["webhook-id"] for r in got} == {failing_log["id"]}
    for delivery in receiver.received[:before_restart]:
        assert_signed(delivery, old)
    for delivery in receiver.received[before_restart:]:
        assert_signed(delivery, secret)
        with pytest.raises(AssertionError):
            assert_signed(delivery, old)
    assert [assert_signed(r, secret)["type"] for r in receiver.for_job(later["id"])] == [
        "job.succeeded"]


def _now() -> str:
    """A timestamp as the SQLite columns hold it (UTC, no zone)."""
    return datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")


def _owner_name(server: LiveServer) -> str:
    with sqlite3.connect(server.data_dir / "gif.db") as db:
        (name,) = db.execute("SELECT name FROM owners").fetchone()
    return name
