"""Deletion is erasure (issue 11) against live ``gif-service`` processes and real files:

- after a dataset and a model are deleted, their uploaded bytes are found nowhere under the
  data directory (every file searched, the database included), and the erasure records (API
  and ``gif-service erasures list``) list them;
- delete racing submit, many times, on SQLite (embedded, local runner) and PostgreSQL (Celery
  worker): never a job that ran on a deleted object;
- a small tmpfs data directory filled to the brim answers 507, leaves nothing partial, and a
  delete frees the space at once so the next upload succeeds;
- the staging file of an upload whose server was killed is gone at the next start."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import IN_CI
from tests.live_server import live_server, run_cli, service_env
from tests.reliability.helpers import wait_job
from tests.service.conftest import (
    TINY_MLP_SPEC,
    npz_bytes,
    safetensors_bytes,
    tiny_state_dict,
)

pytestmark = pytest.mark.services

RACE_TRIALS = 12
QUICK = {"edit": {"kind": "remove_samples", "indices": [0, 1]}, "method": "gif",
         "solver": {"max_iter": 5}, "step": {"mode": "fixed", "scale": 1.0},
         "eval": {"retain_samples": 16}}


def _upload_model(client: httpx.Client, content: bytes) -> dict:
    response = client.post("/v1/models", data={"spec": json.dumps(TINY_MLP_SPEC)},
                           files={"file": ("m.safetensors", content)})
    assert response.status_code == 201, response.text
    return response.json()


def _upload_dataset(client: httpx.Client, content: bytes, name: str = "d") -> httpx.Response:
    return client.post("/v1/datasets", data={"name": name}, files={"file": ("d.npz", content)})


def _random_dataset(seed: int, n: int = 30, features: int = 4) -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    y = (np.arange(n) % 3).astype(np.int64)
    return npz_bytes(x, y), x


def _files_holding(directory: Path, needles: list[bytes]) -> list[str]:
    """Every file under ``directory`` that contains one of ``needles``."""
    found = []
    for path in directory.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if any(needle in data for needle in needles):
                found.append(str(path.relative_to(directory)))
    return found


def test_deleted_uploads_are_found_nowhere_under_the_data_directory(tmp_path):
    data_dir = tmp_path / "data"
    env = service_env(data_dir, extra={"GIF_RUNNER": "none"})
    with live_server(data_dir, env=env) as server, server.client() as client:
        content, x = _random_dataset(seed=11)
        dataset = _upload_dataset(client, content, name="customers").json()
        weights = safetensors_bytes(tiny_state_dict())
        model = _upload_model(client, weights)
        # What identifies the content: the files, and slices of the raw samples and weights.
        needles = [content, weights, x.tobytes()[:64], x.tobytes()[-64:], weights[-64:]]
        assert _files_holding(data_dir, needles), "the uploads are not on disk to begin with"

        assert client.delete(f"/v1/datasets/{dataset['id']}").status_code == 204
        assert client.delete(f"/v1/models/{model['id']}").status_code == 204

        assert _files_holding(data_dir, needles) == []
        records = client.get("/v1/erasures").json()["data"]
        assert [(r["kind"], r["object_id"], r["sha256"]) for r in records] == [
            ("model", model["id"], model["sha256"]),
            ("dataset", dataset["id"], dataset["sha256"])]
        cli_env = {**env, "GIF_URL": server.url, "GIF_API_KEY": server.api_key}
        listed = json.loads(run_cli(["erasures", "list", "--json"], cli_env))
        assert [r["object_id"] for r in listed] == [model["id"], dataset["id"]]
        table = run_cli(["erasures", "list"], cli_env)
        assert dataset["id"] in table and "customers" in table


def _race_once(client: httpx.Client, train_id: str, trial: int) -> dict:
    """Submit a job and delete its model (even trials) or its evaluation set (odd ones) at the
    same moment; returns what each side answered."""
    model = _upload_model(client, safetensors_bytes(tiny_state_dict()))
    evaluation = _upload_dataset(client, _random_dataset(seed=100 + trial)[0], "eval").json()
    target = (f"/v1/models/{model['id']}" if trial % 2 == 0
              else f"/v1/datasets/{evaluation['id']}")
    body = {**QUICK, "model_id": model["id"], "train_dataset_id": train_id,
            "eval": {**QUICK["eval"], "datasets": {"test": evaluation["id"]}}}
    start = threading.Barrier(2)
    answers: dict = {"target": target}

    def submit() -> None:
        start.wait()
        answers["submit"] = client.post("/v1/jobs", json=body)

    def delete() -> None:
        start.wait()
        time.sleep(0.002 * (trial % 4))  # spread the delete over the submission's steps
        answers["delete"] = client.delete(target)

    threads = [threading.Thread(target=submit), threading.Thread(target=delete)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return answers


def _erased_at(client: httpx.Client, object_id: str) -> str:
    records = client.get("/v1/erasures", params={"limit": 100}).json()["data"]
    return next(r["erased_at"] for r in records if r["object_id"] == object_id)


def _check_race(server, trials: int) -> dict[str, int]:
    outcomes: dict[str, int] = {}
    with server.client(timeout=120) as client:
        train_id = _upload_dataset(client, _random_dataset(seed=7)[0], "train").json()["id"]
        results = [_race_once(client, train_id, trial) for trial in range(trials)]
        for answers in results:
            deleted = answers["delete"].status_code
            assert deleted in (204, 409), answers["delete"].text
            submitted = answers["submit"]
            if submitted.status_code == 422:  # the delete won before validation: no job
                assert deleted == 204
                outcomes["refused at submission"] = outcomes.get("refused at submission", 0) + 1
                continue
            assert submitted.status_code == 202, submitted.text
            job = wait_job(server, client, submitted.json()["id"])
            events = client.get(f"/v1/jobs/{job['id']}/events").json()
            ran = any(e["message"].startswith("started on") for e in events)
            if deleted == 204 and job["status"] == "succeeded":
                # Legitimate only if the job had ended before the object was erased.
                erased_at = _erased_at(client, answers["target"].split("/")[-1])
                assert job["finished_at"] <= erased_at, (job, erased_at)
                key = "job ended, then deleted"
            elif deleted == 204:
                # The object is gone: the job must not have run, or produced anything.
                assert job["status"] == "failed" and job["error"]["code"] == "input_deleted", job
                assert not ran and job["edited_model_id"] is None
                key = "deleted, job failed input_deleted"
            else:
                assert job["status"] == "succeeded", job
                assert job["id"] in answers["delete"].json()["detail"]
                assert client.get(answers["target"]).status_code == 200
                key = "409, job ran"
            outcomes[key] = outcomes.get(key, 0) + 1
    return outcomes


def test_delete_racing_submit_never_runs_a_job_on_a_deleted_object_sqlite(tmp_path):
    data_dir = tmp_path / "data"
    env = service_env(data_dir, extra={"GIF_HEARTBEAT_INTERVAL_S": "1"})
    with live_server(data_dir, env=env) as server:
        outcomes = _check_race(server, RACE_TRIALS)
    assert sum(outcomes.values()) == RACE_TRIALS, outcomes
    print("sqlite race outcomes:", outcomes)


def test_delete_racing_submit_never_runs_a_job_on_a_deleted_object_postgres(
        distributed, module_worker):
    outcomes = _check_race(distributed, RACE_TRIALS)
    assert sum(outcomes.values()) == RACE_TRIALS, outcomes
    print("postgres race outcomes:", outcomes)


def test_identical_models_share_bytes_until_the_last_is_deleted(tmp_path):
    data_dir = tmp_path / "data"
    env = service_env(data_dir, extra={"GIF_RUNNER": "none"})
    with live_server(data_dir, env=env) as server, server.client() as client:
        content = safetensors_bytes(tiny_state_dict())
        first, second = _upload_model(client, content), _upload_model(client, content)
        assert client.delete(f"/v1/models/{first['id']}").status_code == 204
        download = client.get(f"/v1/models/{second['id']}/content")
        assert download.status_code == 200
        assert hashlib.sha256(download.content).hexdigest() == second["sha256"]
        assert download.headers["ETag"] == f'"{second["sha256"]}"'


# ------------------------------------------------------------------ a full disk


def _mount_tmpfs(directory: Path, size: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)]
    if os.geteuid() != 0:
        command = ["sudo", "-n", *command]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        message = f"cannot mount a tmpfs ({result.stderr.strip() or result.returncode})"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def _unmount(directory: Path) -> None:
    command = ["umount", "-l", str(directory)]
    if os.geteuid() != 0:
        command = ["sudo", "-n", *command]
    subprocess.run(command, capture_output=True)


def _free(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    _mount_tmpfs(mount, "8m")
    try:
        yield mount
    finally:
        _unmount(mount)


def test_a_full_disk_is_507_nothing_partial_and_a_delete_frees_it(small_disk):
    data_dir = small_disk / "data"
    env = service_env(data_dir, extra={"GIF_RUNNER": "none",
                                       "GIF_MIN_FREE_BYTES": str(256 * 1024)})
    with live_server(data_dir, env=env) as server, server.client() as client:
        stored: list[dict] = []
        refused = None
        for seed in range(20):  # ~1 MiB each on an 8 MiB disk: it fills within 8
            content, _ = _random_dataset(seed, n=256, features=1024)
            response = _upload_dataset(client, content, name=f"fill-{seed}")
            if response.status_code != 201:
                refused = response
                break
            stored.append(response.json())
        assert refused is not None, "the disk never filled"
        assert refused.status_code == 507, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["type"].endswith("insufficient-storage")
        store = data_dir / "artifacts"
        assert list((store / "tmp").iterdir()) == []  # no staging file left
        assert sorted(p.name for p in store.glob("??/*")) == sorted(d["sha256"] for d in stored)
        assert client.get("/readyz").status_code == 200  # the server still works

        before = _free(small_disk)
        assert client.delete(f"/v1/datasets/{stored[0]['id']}").status_code == 204
        # Freed at once (less the few pages the delete itself wrote to the database and log).
        assert _free(small_disk) - before >= stored[0]["size_bytes"] - 64 * 1024

        content, _ = _random_dataset(99, n=256, features=1024)
        again = _upload_dataset(client, content, name="after-delete")
        assert again.status_code == 201, again.text


# ------------------------------------------------------------------ a dead upload


def test_the_staging_file_of_an_upload_killed_midway_is_gone_at_the_next_start(tmp_path):
    data_dir = tmp_path / "data"
    env = service_env(data_dir, extra={"GIF_RUNNER": "none"})
    staging = data_dir / "artifacts" / "tmp"
    with live_server(data_dir, env=env) as server:
        host, port = server.url.removeprefix("http://").split(":")
        boundary = "xyzzy"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nd\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"d.npz\"\r\n\r\n").encode()
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                f"POST /v1/datasets HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {server.api_key}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {len(head) + 10_000_000}\r\n\r\n".encode() + head
                + os.urandom(1_000_000))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(staging.iterdir()):
                time.sleep(0.05)
            assert any(staging.iterdir()), "no staging file appeared"
            server.process.kill()  # SIGKILL: no cleanup of any kind
            server.process.wait(15)
        assert any(staging.iterdir())
    with live_server(data_dir, env=env) as server:
        assert list(staging.iterdir()) == []
        assert httpx.get(server.url + "/healthz").status_code == 200
    shutil.rmtree(data_dir, ignore_errors=True)
