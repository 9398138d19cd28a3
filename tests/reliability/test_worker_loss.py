"""Worker loss: a process running a job is SIGKILLed in the middle of the solve.

- Celery, pool child killed: the worker's parent rejects the late-acked message, Redis hands it
  out again, the new run sees the stale heartbeat, takes the job over (attempt 2) and finishes
  it: one edited model.
- Celery, whole worker killed (parent and child): the message stays unacknowledged for the
  broker's visibility timeout (hours), so only the API's reaper (worker/reaper.py) can notice
  the stale heartbeat; it requeues the job to a new worker (attempt 2); when that worker is
  killed too, the reaper fails the job ``worker_lost``: the number of tries is bounded and the
  job never stays ``running``.
- Embedded local runner, its job process killed: the job fails ``worker_lost`` at once, and the
  runner goes on running the next job."""

from __future__ import annotations

import json
import os
import signal

from tests.live_server import live_server, live_worker, service_env
from tests.reliability.conftest import FAST_ENV
from tests.reliability.helpers import (
    alive,
    celery_pool_child,
    edited_models_per_job,
    in_solve,
    job_rows,
    kill9,
    local_job_child,
    submit,
    upload_dataset,
    upload_model,
    wait_job,
    wait_until,
)
from tests.worker import digits


def finite_solve_request(max_iter: int) -> dict:
    """Runs exactly ``max_iter`` LSQR iterations (an unreachable tolerance), then finishes."""
    return digits.quick_request(
        {"kind": "remove_class", "class": 4},
        solver={"max_iter": max_iter, "tol": 1e-12, "damping": 0.01, "hessian_samples": 512},
        step={"mode": "fixed", "scale": 1.0},
    )


def endless_request() -> dict:
    """Solves far longer than any test waits (10 000 iterations, unreachable tolerance)."""
    return digits.long_request({"kind": "remove_class", "class": 2})


def _events(client, job_id: str) -> list[dict]:
    body = client.get(f"/v1/jobs/{job_id}/events").raise_for_status().json()
    return body["data"] if isinstance(body, dict) else body


def _kill_group(process) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=15)


def test_celery_pool_child_killed_mid_solve_is_redelivered_and_completes(
    distributed_env, upload_files
):
    env = distributed_env
    data_dir = __import__("pathlib").Path(env["GIF_DATA_DIR"])
    with live_server(data_dir, env=env) as server, live_worker(env, log_dir=data_dir) as worker:
        client = server.client()
        model = upload_model(client, upload_files.model)
        dataset = upload_dataset(client, upload_files.data)
        job = submit(client, model["id"], dataset["id"], finite_solve_request(1500))
        running = wait_job(server, client, job["id"], until=in_solve)
        assert running["status"] == "running", running

        child = celery_pool_child(worker)
        kill9(child)
        wait_until(lambda: not alive(child), 15.0, "the killed pool child to go")
        done = wait_job(server, client, job["id"])

        assert done["status"] == "succeeded", (done["error"], worker.log_tail())
        row = job_rows(env["GIF_DATABASE_URL"])[job["id"]]
        assert row["attempts"] == 2  # the killed run, then the redelivered one
        assert edited_models_per_job(env["GIF_DATABASE_URL"]) == {job["id"]: 1}
        messages = [e["message"] for e in _events(client, job["id"])]
        assert any("previous worker was lost" in m for m in messages), messages
        assert worker.running  # the worker's parent survived its child


def test_whole_celery_worker_killed_is_requeued_by_the_reaper_then_bounded(
    distributed_env, upload_files
):
    env = distributed_env
    data_dir = __import__("pathlib").Path(env["GIF_DATA_DIR"])
    with live_server(data_dir, env=env) as server:
        client = server.client()
        model = upload_model(client, upload_files.model)
        dataset = upload_dataset(client, upload_files.data)
        with live_worker(env, name="first", log_dir=data_dir) as first:
            job = submit(client, model["id"], dataset["id"], endless_request())
            assert wait_job(server, client, job["id"], until=in_solve)["status"] == "running"
            _kill_group(first.process)  # parent and pool child: nobody rejects the message

        with live_worker(env, name="second", log_dir=data_dir) as second:
            # Only the reaper can bring the job back (the broker keeps the unacked message for
            # hours): attempt 2 runs on the second worker.
            wait_job(
                server,
                client,
                job["id"],
                until=lambda j: j["status"] != "running"
                or job_rows(env["GIF_DATABASE_URL"])[j["id"]]["attempts"] == 2
                and in_solve(j),
            )
            assert job_rows(env["GIF_DATABASE_URL"])[job["id"]]["status"] == "running"
            assert "reaper: job" in server.logs() and "requeued" in server.logs()
            _kill_group(second.process)

        failed = wait_job(server, client, job["id"], timeout=60.0)
        assert failed["status"] == "failed", failed
        assert failed["error"]["code"] == "worker_lost"
        row = job_rows(env["GIF_DATABASE_URL"])[job["id"]]
        assert row["attempts"] == 2
        assert edited_models_per_job(env["GIF_DATABASE_URL"]) == {}


def test_local_runner_child_killed_fails_worker_lost_and_runner_goes_on(
    tmp_path, upload_files
):
    data_dir = tmp_path / "data"
    env = service_env(data_dir, extra=FAST_ENV)
    with live_server(data_dir, env=env) as server:
        client = server.client()
        model = upload_model(client, upload_files.model)
        dataset = upload_dataset(client, upload_files.data)
        job = submit(client, model["id"], dataset["id"], endless_request())
        assert wait_job(server, client, job["id"], until=in_solve)["status"] == "running"

        kill9(local_job_child(server))
        failed = wait_job(server, client, job["id"], timeout=60.0)

        assert failed["status"] == "failed" and failed["error"]["code"] == "worker_lost"
        assert "signal 9" in failed["error"]["message"]
        # The runner survived: the next job runs to the end.
        following = submit(client, model["id"], dataset["id"], finite_solve_request(20))
        assert wait_job(server, client, following["id"])["status"] == "succeeded"
        database = f"sqlite:///{data_dir / 'gif.db'}"
        assert edited_models_per_job(database) == {following["id"]: 1}
        error = job_rows(database)[job["id"]]["error"]
        assert (json.loads(error) if isinstance(error, str) else error)["code"] == "worker_lost"
