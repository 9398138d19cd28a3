"""Per-owner limits through a live ``gif-service serve`` (uvicorn): a submission past the
queued-jobs limit and requests past the rate are 429 problems with ``Retry-After``; another
owner is not affected and the server keeps answering."""

from __future__ import annotations

from tests.live_server import create_api_key, live_server, service_env
from tests.reliability.helpers import upload_dataset, upload_model

RATE = 30


def test_queued_jobs_and_request_rate_are_429_with_retry_after(tmp_path, upload_files):
    data_dir = tmp_path / "data"
    env = service_env(data_dir, extra={
        "GIF_RUNNER": "none", "GIF_RATE_LIMIT_PER_MINUTE": str(RATE),
        "GIF_MAX_QUEUED_JOBS_PER_OWNER": "2", "GIF_LIMIT_RETRY_AFTER_S": "11",
    })
    with live_server(data_dir, env=env, startup_timeout=180) as server:
        client = server.client(timeout=300)
        model = upload_model(client, upload_files.model)
        dataset = upload_dataset(client, upload_files.data)
        body = {"model_id": model["id"], "train_dataset_id": dataset["id"],
                "edit": {"kind": "remove_class", "class": 3}}
        assert [client.post("/v1/jobs", json=body).status_code for _ in range(2)] == [202, 202]
        refused = client.post("/v1/jobs", json=body)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "11"
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["type"].endswith(":too-many-queued-jobs")

        # The bucket holds a minute's worth: it runs out within that many requests (plus what
        # refills while they are answered).
        limited = None
        for _ in range(3 * RATE):
            response = client.get("/v1/jobs")
            if response.status_code != 200:
                limited = response
                break
        assert limited is not None
        assert limited.status_code == 429 and limited.json()["type"].endswith(":rate-limited")
        assert 1 <= int(limited.headers["Retry-After"]) <= 60 / RATE + 1
        other = create_api_key(server.env, "someone-else")
        assert client.get("/v1/models", headers={"Authorization": f"Bearer {other}"}
                          ).status_code == 200
        assert client.get("/healthz").status_code == 200
