"""Worker loss: a process running a job is SIGKILLed in the middle of the solve.

- Celery, pool child killed: the worker's parent rejects the late-acked message, Redis hands it
  out again, the new run sees the stale heartbeat, takes the job over (attempt 2) and finishes
  it: one edited model.
- Celery, whole worker killed (parent and child): the message stays unacknowledged for the
  broker's visibility timeout (hours), so only the API's reaper (service/jobs/reaper.py) can notice
  the stale heartbeat; it requeues the job to a new worker (attempt 2); when that worker is
  killed too, the reaper fails the job ``worker_lost``: the number of tries is bounded and the
  job never stays ``running``.
- Embedded local runner, its job process killed: the job fails ``worker_lost`` at once, and the
  runner goes on running the next job."""

from __future__ import annotations

import json
import os
import signal

from tests.live_server import live_worker
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
    distributed, upload_files
):
    server, env = distributed, distributed.env
    database = env["GIF_DATABASE_URL"]
    client = server.client()
    model = upload_model(client, upload_files.model)
    dataset = upload_dataset(client, upload_files.data)
    with live_worker(env, name="pool-kill", log_dir=server.data_dir) as worker:
        job = submit(client, model["id"], dataset["id"], finite_solve_request(400))
        running = wait_job(server, client, job["id"], until=in_solve)
        assert running["status"] == "running", running

        child = celery_pool_child(worker)
        kill9(child)
        wait_until(lambda: not alive(child), 15.0, "the killed pool child to go")
        done = wait_job(server, client, job["id"])

        assert done["status"] == "succeeded", (done["error"], worker.log_tail())
        assert job_rows(database)[job["id"]]["attempts"] == 2  # killed run + redelivered one
        assert edited_models_per_job(database).get(job["id"]) == 1
        messages = [e["message"] for e in _events(client, job["id"])]
        assert any("previous worker was lost" in m for m in messages), messages
        assert worker.running  # the worker's parent survived its child


def test_whole_celery_worker_killed_is_requeued_by_the_reaper_then_bounded(
    distributed, upload_files
):
    server, env = distributed, distributed.env
    database = env["GIF_DATABASE_URL"]
    client = server.client()
    model = upload_model(client, upload_files.model)
    dataset = upload_dataset(client, upload_files.data)
    with live_worker(env, name="first", log_dir=server.data_dir) as first:
        job = submit(client, model["id"], dataset["id"], endless_request())
        assert wait_job(server, client, job["id"], until=in_solve)["status"] == "running"
        _kill_group(first.process)  # parent and pool child: nobody rejects the message

    with live_worker(env, name="second", log_dir=server.data_dir) as second:
        # Only the reaper can bring the job back (the broker keeps the unacked message for
        # hours): attempt 2 runs on the second worker.
        def second_attempt_solving(j: dict) -> bool:
            return j["status"] != "running" or (
                in_solve(j) and job_rows(database)[j["id"]]["attempts"] == 2
            )

        wait_job(server, client, job["id"], until=second_attempt_solving)
        assert job_rows(database)[job["id"]]["status"] == "running"
        assert f"reaper: job {job['id']} lost its worker (attempt 1): requeued" in server.logs()
        _kill_group(second.process)

    failed = wait_job(server, client, job["id"], timeout=60.0)
    assert failed["status"] == "failed", failed
    assert failed["error"]["code"] == "worker_lost"
    assert job_rows(database)[job["id"]]["attempts"] == 2
    assert edited_models_per_job(database).get(job["id"]) is None


def test_local_runner_child_killed_fails_worker_lost_and_runner_goes_on(embedded, uploaded):
    server, client = embedded, embedded.client()
    model, dataset = uploaded["model"], uploaded["dataset"]
    job = submit(client, model["id"], dataset["id"], endless_request())
    assert wait_job(server, client, job["id"], until=in_solve)["status"] == "running"

    kill9(local_job_child(server))
    failed = wait_job(server, client, job["id"], timeout=60.0)

    assert failed["status"] == "failed" and failed["error"]["code"] == "worker_lost"
    assert "signal 9" in failed["error"]["message"]
    # The runner survived: the next job runs to the end.
    following = submit(client, model["id"], dataset["id"], finite_solve_request(20))
    assert wait_job(server, client, following["id"])["status"] == "succeeded"
    database = f"sqlite:///{server.data_dir / 'gif.db'}"
    per_job = edited_models_per_job(database)
    assert per_job.get(following["id"]) == 1 and job["id"] not in per_job
    error = job_rows(database)[job["id"]]["error"]
    assert (json.loads(error) if isinstance(error, str) else error)["code"] == "worker_lost"
