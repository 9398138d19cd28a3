"""Per-job overhead of both runners, and what a cancelled job's message costs a worker.

    .venv/bin/python bench/bench_workers.py [--jobs 6] [--cancelled 30]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
        [--redis redis://127.0.0.1:6379/3]

Real processes (tests/live_server.py): the embedded default (``gif-service serve``, SQLite,
local runner) and the distributed mode (``gif-service serve`` + ``gif-service worker`` on a
fresh PostgreSQL database and its own Redis queue). A tiny job (digits MLP, the test suite's
quick request) is submitted ``--jobs`` times, one after the other; for each, the overhead is

    (finished_at - created_at) - edit_seconds

where ``edit_seconds`` is the edit's own wall time as the worker measured it around
``run_edit`` (the ``succeeded`` event's data). It covers the hand-over to the runner, the
claim, loading the model and data from the artifact store (hashes verified), storing the edited
checkpoint and the result. The first job of each runner is shown apart: it is the job
process's first, submitted once that process logged the end of its warm-up
(``worker.process.warm_up``: imports, database connection, compiled reads, ``gc.freeze``;
its duration is shown too). A job submitted during a cold start waits for the rest of it.

Cancelled messages: ``--cancelled`` jobs are submitted and cancelled while no worker runs,
then the Celery worker starts and drains their messages; Celery logs each task's own time
(``succeeded in X s``), which is the worker time a cancelled message costs. For the local
runner the same jobs are settled in the runner thread: the figure is the time of that one
read (``service.jobs.state.needs_run``), taken in this process on the server's database after
the runner's own warm-up reads (``warm_up_reads``, which the runner thread makes at start)."""

from __future__ import annotations

import argparse
import re
import secrets
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_load import DEFAULT_POSTGRES, _upload  # noqa: E402  (this directory)

from tests.live_server import live_server, live_worker, service_env  # noqa: E402
from tests.worker import digits  # noqa: E402

TERMINAL = ("succeeded", "failed", "cancelled")


def _request(i: int) -> dict:
    return digits.quick_request({"kind": "remove_class", "class": i % 10},
                                step={"mode": "fixed", "scale": 1.0}, seed=i)


def _wait(client: httpx.Client, job_id: str, timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.05)
    raise TimeoutError(job_id)


def _overhead(client: httpx.Client, job: dict) -> float:
    events = client.get(f"/v1/jobs/{job['id']}/events").raise_for_status().json()
    events = events["data"] if isinstance(events, dict) else events
    done = [e for e in events if e["message"] == "succeeded"]
    assert job["status"] == "succeeded" and done, job
    total = (datetime.fromisoformat(job["finished_at"])
             - datetime.fromisoformat(job["created_at"])).total_seconds()
    return total - done[-1]["data"]["edit_seconds"]


WARMED = re.compile(r"job process \d+ warmed up in ([0-9.]+) s")


def _await_warm(process, timeout: float = 300.0) -> float:
    """Wait until the runner's job process logged the end of its warm-up
    (``worker.process.warm_up``); its duration in seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = WARMED.search(process.logs())
        if found:
            return float(found.group(1))
        time.sleep(0.1)
    raise TimeoutError("the job process never logged its warm-up")


def _run_jobs(client: httpx.Client, model_id: str, dataset_id: str, jobs: int) -> list[float]:
    overheads = []
    for i in range(jobs):
        body = {"model_id": model_id, "train_dataset_id": dataset_id, **_request(i)}
        job = client.post("/v1/jobs", json=body).raise_for_status().json()
        overheads.append(_overhead(client, _wait(client, job["id"])))
    return overheads


def _cancelled_jobs(client: httpx.Client, model_id: str, dataset_id: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        body = {"model_id": model_id, "train_dataset_id": dataset_id, **_request(i)}
        job = client.post("/v1/jobs", json=body).raise_for_status().json()
        client.post(f"/v1/jobs/{job['id']}/cancel").raise_for_status()
        ids.append(job["id"])
    return ids


def _needs_run_seconds(database_url: str, job_ids: list[str]) -> list[float]:
    from service.db.session import make_engine, make_session_factory
    from service.jobs.state import needs_run, warm_up_reads

    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    try:
        warm_up_reads(factory)  # as the runner thread does at its start
        times = []
        for job_id in job_ids:
            started = time.perf_counter()
            assert not needs_run(factory, job_id)
            times.append(time.perf_counter() - started)
        return times
    finally:
        engine.dispose()


def bench_local(jobs: int, cancelled: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        env = service_env(data_dir, extra={"GIF_LOG_LEVEL": "info"})
        with live_server(data_dir, env=env) as server, server.client(timeout=120) as client:
            model_id, dataset_id = _upload(client, Path(tmp) / "files")
            warm_up = _await_warm(server)
            overheads = _run_jobs(client, model_id, dataset_id, jobs)
            ids = _cancelled_jobs(client, model_id, dataset_id, cancelled)
            for job_id in ids:
                _wait(client, job_id)
            read = _needs_run_seconds(f"sqlite:///{data_dir / 'gif.db'}", ids)
    return {"overheads": overheads, "cancelled": read, "warm_up": warm_up}


def bench_celery(jobs: int, cancelled: int, database_url: str, redis_url: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        env = service_env(data_dir, database_url=database_url, broker_url=redis_url,
                          extra={"GIF_LOG_LEVEL": "info",
                                 "GIF_JOB_QUEUE": f"gif-bench-{secrets.token_hex(4)}"})
        with live_server(data_dir, env=env) as server, server.client(timeout=120) as client:
            model_id, dataset_id = _upload(client, Path(tmp) / "files")
            ids = _cancelled_jobs(client, model_id, dataset_id, cancelled)  # no worker yet
            with live_worker(env, log_dir=data_dir) as worker:
                warm_up = _await_warm(worker)
                overheads = _run_jobs(client, model_id, dataset_id, jobs)  # after the no-ops
                task_times = [float(t) for t in re.findall(r"succeeded in ([0-9.e-]+)s",
                                                           worker.logs())]
    # The first `cancelled` tasks the worker ran were the cancelled jobs' messages.
    return {"overheads": overheads, "cancelled": task_times[:cancelled], "ids": ids,
            "warm_up": warm_up}


def _fresh_postgres(url: str):
    import psycopg
    import sqlalchemy as sa

    parsed = sa.make_url(url)
    admin = parsed.set(drivername="postgresql").render_as_string(False)
    name = f"gif_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True, connect_timeout=3) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return parsed.set(database=name).render_as_string(False), drop


def _row(runner: str, result: dict) -> str:
    first, rest = result["overheads"][0], result["overheads"][1:]
    cancel = sorted(result["cancelled"])
    return (f"| {runner} | {result['warm_up']:.2f} | {len(result['overheads'])} | {first:.2f} | "
            f"{statistics.median(rest):.2f} | {max(rest):.2f} | "
            f"{1000 * statistics.median(cancel):.1f} | {1000 * cancel[-1]:.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--cancelled", type=int, default=30)
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/3")
    args = parser.parse_args()
    local = bench_local(args.jobs, args.cancelled)
    database_url, drop = _fresh_postgres(args.postgres)
    try:
        celery = bench_celery(args.jobs, args.cancelled, database_url, args.redis)
    finally:
        drop()
    print("| runner | job process warm-up s | jobs | overhead, first job s | "
          "overhead, median of the rest s | max of the rest s | "
          "cancelled message, median ms | max ms |")
    print("|---|---|---|---|---|---|---|---|")
    print(_row("local (embedded, SQLite)", local))
    print(_row("celery (PostgreSQL, Redis)", celery))
    return 0


if __name__ == "__main__":
    sys.exit(main())
