"""End to end through real processes, in both deployments (``live`` fixture): upload, edit,
follow progress, download and check the edited checkpoint, metrics and events, chain a second
edit; cancel a long job; a job whose numbers blow up fails and leaves its source untouched.

Only HTTP (``httpx``) talks to the service, as a client would."""

from __future__ import annotations

import hashlib
import json
import time

import httpx
import pytest
import torch
from safetensors.torch import load

from tests.live_server import LiveServer
from tests.worker import digits

JOB_TIMEOUT_S = 240.0  # generous: a job's child process imports torch on a loaded machine
TERMINAL = ("succeeded", "failed", "cancelled")


def upload_model(client: httpx.Client, path, name: str) -> dict:
    spec = {**digits.MLP_SPEC, "name": name}
    with path.open("rb") as handle:
        response = client.post(
            "/v1/models",
            files={"file": (path.name, handle, "application/octet-stream")},
            data={"spec": json.dumps(spec)},
        )
    assert response.status_code == 201, response.text
    return response.json()


def upload_dataset(client: httpx.Client, path) -> dict:
    with path.open("rb") as handle:
        response = client.post(
            "/v1/datasets",
            files={"file": (path.name, handle, "application/octet-stream")},
            data={"name": "digits-train"},
        )
    assert response.status_code == 201, response.text
    return response.json()


def submit(client: httpx.Client, model_id: str, dataset_id: str, request: dict) -> dict:
    body = {"model_id": model_id, "train_dataset_id": dataset_id, **request}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    assert response.headers["location"].endswith(f"/v1/jobs/{response.json()['id']}")
    return response.json()


def follow(server: LiveServer, client: httpx.Client, job_id: str, until=None) -> tuple[dict, list]:
    """Poll the job until ``until(job)`` (default: terminal); returns it and every distinct
    (status, progress) snapshot seen on the way."""
    until = until or (lambda job: job["status"] in TERMINAL)
    seen: list[tuple[str, str]] = []
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
        snapshot = (job["status"], json.dumps(job["progress"], sort_keys=True))
        if not seen or seen[-1] != snapshot:
            seen.append(snapshot)
        if until(job):
            return job, [(status, json.loads(progress)) for status, progress in seen]
        time.sleep(0.05)
    pytest.fail(f"job {job_id} stuck at {seen[-1:]}\n--- server log ---\n{server.log_tail()}")


def download(client: httpx.Client, model_id: str) -> tuple[bytes, httpx.Response]:
    response = client.get(f"/v1/models/{model_id}/content")
    assert response.status_code == 200, response.text
    return response.content, response


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_edit_follow_download_and_chain(live: LiveServer, upload_files):
    client = live.client()
    source = upload_model(client, upload_files.model, "digits-mlp")
    dataset = upload_dataset(client, upload_files.data)
    source_bytes, _ = download(client, source["id"])
    request = digits.quick_request(
        {"kind": "remove_class", "class": 3},
        solver={"max_iter": 60, "tol": 1e-7, "hessian_samples": 512},
    )

    job = submit(client, source["id"], dataset["id"], request)
    assert job["status"] == "queued" and job["request"]["edit"] == request["edit"]
    job, seen = follow(live, client, job["id"])

    assert job["status"] == "succeeded", job["error"]
    running = [progress for status, progress in seen if status == "running" and progress]
    assert running, f"never saw the job running with progress: {seen}"
    assert {"phase", "iteration", "max_iter", "residual"} <= set(running[-1])
    # The edited model: a new model whose source is the job.
    edited_id = job["result"]["edited_model_id"]
    edited = client.get(f"/v1/models/{edited_id}").raise_for_status().json()
    assert edited["source_job_id"] == job["id"] and edited["arch"] == "mlp"
    # Its checkpoint: the hash of the bytes is the ETag and the model's sha256 ...
    content, response = download(client, edited_id)
    assert response.headers["etag"].strip('"') == sha256(content) == edited["sha256"]
    assert int(response.headers["content-length"]) == len(content) == edited["size_bytes"]
    # ... it loads strictly into the architecture ...
    weights = load(content)
    module = digits.mlp_module()
    module.load_state_dict(weights, strict=True)
    # ... and differs from the source only in (at most) the selected parameters.
    original = upload_files.state_dict
    changed = sum(int((weights[k] != original[k]).sum()) for k in original)
    assert 0 < changed <= job["result"]["selection"]["num_selected"]
    # Metrics (before/after) and the event log.
    metrics = client.get(f"/v1/jobs/{job['id']}/metrics").raise_for_status().json()
    forget_before = metrics["before"]["forget"]["accuracy"]
    forget_after = metrics["after"]["forget"]["accuracy"]
    assert forget_before > 0.9 and forget_after < 0.5
    events = client.get(f"/v1/jobs/{job['id']}/events").raise_for_status().json()
    events = events["data"] if isinstance(events, dict) else events
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert {"solve", "evaluate"} <= {e["phase"] for e in events}
    # The source model is unchanged.
    assert sha256(download(client, source["id"])[0]) == sha256(source_bytes) == source["sha256"]

    # Chain: edit the edited model (forget class 7 too).
    second = submit(
        client, edited_id, dataset["id"], digits.quick_request({"kind": "remove_class", "class": 7})
    )
    second, _ = follow(live, client, second["id"])
    assert second["status"] == "succeeded", second["error"]
    assert second["request"]["model_id"] == edited_id
    chained = client.get(f"/v1/models/{second['result']['edited_model_id']}").json()
    assert chained["source_job_id"] == second["id"] and chained["id"] != edited_id
    assert second["result"]["metrics"]["after"]["forget"]["accuracy"] < 0.5


def test_cancel_a_running_job_produces_no_model(live: LiveServer, upload_files):
    client = live.client()
    source = upload_model(client, upload_files.model, "to-cancel")
    dataset = upload_dataset(client, upload_files.data)
    models_before = {m["id"] for m in client.get("/v1/models").json()["data"]}
    job = submit(
        client,
        source["id"],
        dataset["id"],
        digits.long_request({"kind": "remove_class", "class": 2}),
    )

    job, _ = follow(
        live,
        client,
        job["id"],
        until=lambda j: (j["progress"] or {}).get("phase") == "solve" or j["status"] in TERMINAL,
    )
    assert job["status"] == "running", job
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200 and response.json()["id"] == job["id"]
    job, _ = follow(live, client, job["id"])

    assert job["status"] == "cancelled"
    assert job["result"] is None
    assert job["progress"]["phase"] == "solve"  # stopped inside the solver, not after it
    models_after = {m["id"] for m in client.get("/v1/models").json()["data"]}
    assert models_after == models_before


def test_a_job_whose_numbers_blow_up_fails_and_keeps_its_source(live: LiveServer, upload_files):
    client = live.client()
    source = upload_model(client, upload_files.overflowing_model, "overflowing")
    dataset = upload_dataset(client, upload_files.data)

    job = submit(
        client,
        source["id"],
        dataset["id"],
        digits.quick_request({"kind": "remove_class", "class": 1}),
    )
    job, _ = follow(live, client, job["id"])

    assert job["status"] == "failed" and job["result"] is None
    assert job["error"]["code"] == "non_finite" and job["error"]["message"]
    content, response = download(client, source["id"])
    assert sha256(content) == source["sha256"] == response.headers["etag"].strip('"')
    weights = load(content)
    assert all(torch.equal(weights[k], v * 1e20) for k, v in upload_files.state_dict.items())
