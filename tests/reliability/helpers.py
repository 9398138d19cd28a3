"""Helpers of the reliability tests: talk HTTP to a live server like a client does, wait for job
states, look at processes through /proc (which child runs a job), and read the database."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.live_server import LiveProcess, LiveServer
from tests.worker import digits

TERMINAL = ("succeeded", "failed", "cancelled")
JOB_TIMEOUT_S = 240.0  # generous: job processes import torch on a loaded 2-core machine


def upload_model(client: httpx.Client, path: Path, name: str = "digits-mlp") -> dict:
    spec = {**digits.MLP_SPEC, "name": name}
    with path.open("rb") as handle:
        response = client.post(
            "/v1/models",
            files={"file": (path.name, handle, "application/octet-stream")},
            data={"spec": json.dumps(spec)},
        )
    assert response.status_code == 201, response.text
    return response.json()


def upload_dataset(client: httpx.Client, path: Path, name: str = "digits-train") -> dict:
    with path.open("rb") as handle:
        response = client.post(
            "/v1/datasets",
            files={"file": (path.name, handle, "application/octet-stream")},
            data={"name": name},
        )
    assert response.status_code == 201, response.text
    return response.json()


def submit(client: httpx.Client, model_id: str, dataset_id: str, request: dict, **kw) -> dict:
    body = {"model_id": model_id, "train_dataset_id": dataset_id, **request}
    response = client.post("/v1/jobs", json=body, **kw)
    assert response.status_code == 202, response.text
    return response.json()


def wait_job(
    server: LiveServer,
    client: httpx.Client,
    job_id: str,
    until: Callable[[dict], bool] | None = None,
    timeout: float = JOB_TIMEOUT_S,
) -> dict:
    """Poll the job until ``until(job)`` (default: terminal); fail with the server log if not."""
    until = until or (lambda job: job["status"] in TERMINAL)
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        response = client.get(f"/v1/jobs/{job_id}")
        if response.status_code == 200:
            job = response.json()
            if until(job):
                return job
        time.sleep(0.1)
    pytest.fail(f"job {job_id} stuck at {job}\n--- server log ---\n{log_without_access(server)}")


def log_without_access(server: LiveServer, max_chars: int = 8000) -> str:
    """The server's log minus the per-request access lines (what went on besides polling)."""
    lines = [line for line in server.logs().splitlines() if '"service.access"' not in line]
    return "\n".join(lines)[-max_chars:]


def in_solve(job: dict) -> bool:
    """The job is inside the solver (or already over)."""
    return job["status"] in TERMINAL or (
        job["status"] == "running" and (job["progress"] or {}).get("phase") == "solve"
    )


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def celery_pool_child(worker: LiveProcess) -> int:
    """The pid of the Celery worker's prefork pool child (the process that runs the job)."""
    pids = wait_until(
        lambda: children(worker.process.pid), 30.0, "the Celery pool child process"
    )
    assert isinstance(pids, list) and len(pids) == 1, pids
    return pids[0]


def local_job_child(server: LiveServer) -> int:
    """The pid of the embedded local runner's spawn child (not multiprocessing's tracker)."""
    def find() -> list[int]:
        return [p for p in children(server.process.pid) if "spawn_main" in cmdline(p)]

    pids = wait_until(find, 60.0, "the local runner's job process")
    assert isinstance(pids, list) and len(pids) == 1, pids
    return pids[0]


def kill9(pid: int) -> None:
    os.kill(pid, 9)


def edited_models_per_job(database_url: str) -> dict[str, int]:
    """``job_id → number of models whose source_job_id is that job`` (read from the database)."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT source_job_id, count(*) FROM models "
                    "WHERE source_job_id IS NOT NULL GROUP BY source_job_id"
                )
            ).all()
    finally:
        engine.dispose()
    return {job_id: count for job_id, count in rows}


def job_rows(database_url: str) -> dict[str, dict]:
    """Every job row's status, attempts and error (straight from the database)."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text("SELECT id, status, attempts, error, edited_model_id FROM jobs")
            ).mappings().all()
    finally:
        engine.dispose()
    return {row["id"]: dict(row) for row in rows}


def logged_statuses(server: LiveServer) -> list[int]:
    """The HTTP status of every request in the server's JSON access log."""
    statuses = []
    for line in server.logs().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("status"), int):
            statuses.append(record["status"])
    return statuses
