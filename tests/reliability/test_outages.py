"""Broker and database outages of a few seconds, on instances of our own (the shared services
stay up): our ``redis-server`` is shut down (``redis-cli shutdown nosave``) and started again;
the API's PostgreSQL database refuses connections (``ALLOW_CONNECTIONS false`` and its sessions
cut) and is opened again. Meanwhile the API answers 503 problems (never a 500), ``/readyz``
says what is down, nothing half-submitted is left; afterwards work resumes."""

from __future__ import annotations

import httpx

from tests.reliability.conftest import set_database_connections
from tests.reliability.helpers import (
    logged_statuses,
    submit,
    upload_dataset,
    upload_model,
    wait_job,
    wait_until,
)
from tests.worker import digits

PROBLEM = "application/problem+json"


def _quick(cls: int) -> dict:
    return digits.quick_request({"kind": "remove_class", "class": cls})


def _assert_503_problem(response: httpx.Response) -> dict:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == 503 and body["detail"] and body["type"].startswith("urn:")
    return body


def _ready(client: httpx.Client) -> bool:
    return client.get("/readyz").status_code == 200


def test_broker_outage_is_503_then_work_resumes(
    distributed, module_worker, own_redis, upload_files
):
    client = distributed.client()
    model = upload_model(client, upload_files.model)
    dataset = upload_dataset(client, upload_files.data)
    jobs_before = client.get("/v1/jobs", params={"limit": 100}).json()["data"]

    own_redis.stop()
    try:
        ready = _assert_503_problem(client.get("/readyz"))
        assert "runner" in ready["detail"]
        refused = client.post(
            "/v1/jobs", json={"model_id": model["id"], "train_dataset_id": dataset["id"],
                              **_quick(1)}
        )
        assert "runner" in _assert_503_problem(refused)["detail"]
        # Reads that need only the database still work, and the refused job was withdrawn.
        listed = client.get("/v1/jobs", params={"limit": 100})
        assert listed.status_code == 200
        assert [j["id"] for j in listed.json()["data"]] == [j["id"] for j in jobs_before]
    finally:
        own_redis.start()

    wait_until(lambda: _ready(client), 30.0, "/readyz to recover after the broker is back")
    job = submit(client, model["id"], dataset["id"], _quick(2))
    done = wait_job(distributed, client, job["id"])
    assert done["status"] == "succeeded", (done["error"], module_worker.log_tail())
    assert 503 in logged_statuses(distributed)
    assert 500 not in logged_statuses(distributed)


def test_database_outage_is_503_then_work_resumes(
    distributed, module_worker, postgres_url, upload_files
):
    client = distributed.client()
    model = upload_model(client, upload_files.model)
    dataset = upload_dataset(client, upload_files.data)
    database = distributed.env["GIF_DATABASE_URL"]

    set_database_connections(postgres_url, database, allow=False)
    try:
        ready = _assert_503_problem(client.get("/readyz"))
        assert "database" in ready["detail"]
        for response in (
            client.get("/v1/models"),
            client.get(f"/v1/models/{model['id']}"),
            client.post("/v1/jobs", json={"model_id": model["id"],
                                          "train_dataset_id": dataset["id"], **_quick(3)}),
        ):
            _assert_503_problem(response)
        assert client.get("/healthz").status_code == 200  # the process itself is alive
    finally:
        set_database_connections(postgres_url, database, allow=True)

    wait_until(lambda: _ready(client), 30.0, "/readyz to recover after the database is back")
    assert client.get(f"/v1/models/{model['id']}").status_code == 200
    job = submit(client, model["id"], dataset["id"], _quick(3))
    done = wait_job(distributed, client, job["id"])
    assert done["status"] == "succeeded", (done["error"], module_worker.log_tail())
    assert 503 in logged_statuses(distributed)
    assert 500 not in logged_statuses(distributed)
