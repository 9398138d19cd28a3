"""API restart while jobs are queued and running (embedded deployment: the API process runs the
jobs, so its restart is the hard case). The server is stopped (SIGTERM, as systemd or Ctrl-C
does) while one job is inside its solve and two wait in the queue, then started again on the
same data directory: every job reaches a terminal state, and no job produces more than one
edited model (checked in the database)."""

from __future__ import annotations

from tests.live_server import live_server, service_env, start_server
from tests.reliability.conftest import FAST_ENV
from tests.reliability.helpers import (
    TERMINAL,
    edited_models_per_job,
    in_solve,
    job_rows,
    submit,
    upload_dataset,
    upload_model,
    wait_job,
)
from tests.worker import digits


def _request(cls: int, max_iter: int) -> dict:
    # No early stopping (stagnation, condition limit): the long job must still be solving when
    # the server stops, however quiet the machine (it stopped on stagnation and finished first)
    return digits.quick_request(
        {"kind": "remove_class", "class": cls},
        solver={"max_iter": max_iter, "tol": 1e-12, "hessian_samples": 512,
                "stagnation_window": 0, "conlim": 0},
        step={"mode": "fixed", "scale": 1.0},
    )


def test_restart_with_running_and_queued_jobs_finishes_each_exactly_once(
    tmp_path, upload_files
):
    data_dir = tmp_path / "data"
    env = service_env(data_dir, extra=FAST_ENV)
    first = start_server(data_dir, env=env)
    try:
        client = first.client()
        model = upload_model(client, upload_files.model)
        dataset = upload_dataset(client, upload_files.data)
        running = submit(client, model["id"], dataset["id"], _request(1, 400))
        queued = [submit(client, model["id"], dataset["id"], _request(c, 10)) for c in (2, 3)]
        assert wait_job(first, client, running["id"], until=in_solve)["status"] == "running"
        statuses = {j["id"]: client.get(f"/v1/jobs/{j['id']}").json()["status"] for j in queued}
        assert set(statuses.values()) == {"queued"}
    finally:
        first.stop()

    database = f"sqlite:///{data_dir / 'gif.db'}"
    assert job_rows(database)[running["id"]]["status"] == "running"  # left behind by the stop
    with live_server(data_dir, env=env) as second:
        client = second.client()
        jobs = [wait_job(second, client, j["id"]) for j in (running, *queued)]

    assert [j["status"] for j in jobs] == ["succeeded"] * 3, [j["error"] for j in jobs]
    rows = job_rows(database)
    assert rows[running["id"]]["attempts"] == 2  # interrupted once, re-run once
    assert [rows[j["id"]]["attempts"] for j in queued] == [1, 1]
    assert all(row["status"] in TERMINAL for row in rows.values())
    assert edited_models_per_job(database) == {j["id"]: 1 for j in jobs}
    assert {rows[j["id"]]["edited_model_id"] for j in jobs} == {
        j["result"]["edited_model_id"] for j in jobs
    }
