"""Submission throughput and latency of the HTTP API under concurrent clients.

    .venv/bin/python bench/bench_load.py [--requests 400] [--clients 1,20]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres] [--no-postgres]

Starts real ``gif-service serve`` processes (tests/live_server.py) with runner ``none`` — jobs
stay queued, so the numbers are the API's own cost (validation, idempotency lookup, insert,
auth), not the engine's: one on SQLite (the embedded default), and, when PostgreSQL answers,
one on a fresh PostgreSQL database (dropped afterwards). For each deployment and each client
count, ``--requests`` requests of each kind are sent by that many threads (one httpx client
each):

- ``POST /v1/jobs``: a new job each time (a distinct Idempotency-Key and seed);
- ``POST /v1/jobs (replay)``: the same key and body again (answered 200 from the first job);
- ``GET /v1/jobs/{id}``: an authenticated read of one row;
- ``GET /healthz``: no database, no auth — the baseline every ratio is against.

Printed: throughput (requests/s, wall time of the whole batch), p50/p99/max latency, p50 and
p99 as multiples of the baseline's in the same run, then the targets of issue 10 (POST /v1/jobs
p50 <= 3x /healthz p50 at 1 client; p99 <= 3x /healthz p99 at 20 clients), met or not.
Every response must be 2xx; any other status is counted and printed (it would be a bug: the
load test in tests/reliability/ fails on it)."""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.live_server import live_server, service_env  # noqa: E402
from tests.worker import digits  # noqa: E402

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * (len(sorted_values) - 1) + 0.5))]


def _upload(client: httpx.Client, directory: Path) -> tuple[str, str]:
    x, y = digits.digits_arrays(300)
    model_path, data_path = digits.write_files(directory, digits.train_mlp(x, y, steps=5), x, y)
    with model_path.open("rb") as handle:
        model = client.post(
            "/v1/models",
            files={"file": ("m.safetensors", handle, "application/octet-stream")},
            data={"spec": json.dumps(digits.MLP_SPEC)},
        )
    with data_path.open("rb") as handle:
        dataset = client.post(
            "/v1/datasets",
            files={"file": ("d.npz", handle, "application/octet-stream")},
            data={"name": "bench"},
        )
    model.raise_for_status()
    dataset.raise_for_status()
    return model.json()["id"], dataset.json()["id"]


def _run_batch(server, clients: int, requests: int, make_request) -> dict:
    """``requests`` calls of ``make_request(client, i) -> Response`` from ``clients`` threads."""
    pool_clients = [server.client(timeout=120.0) for _ in range(clients)]
    latencies: list[float] = []
    bad: dict[int, int] = {}

    def one(i: int) -> None:
        started = time.perf_counter()
        response = make_request(pool_clients[i % clients], i)
        latencies.append(time.perf_counter() - started)
        if not 200 <= response.status_code < 300:
            bad[response.status_code] = bad.get(response.status_code, 0) + 1

    wall = time.perf_counter()
    with ThreadPoolExecutor(clients) as executor:
        list(executor.map(one, range(requests)))
    wall = time.perf_counter() - wall
    for client in pool_clients:
        client.close()
    latencies.sort()
    return {
        "throughput": requests / wall,
        "p50": statistics.median(latencies),
        "p99": _percentile(latencies, 0.99),
        "max": latencies[-1],
        "bad": bad,
    }


def bench_deployment(name: str, env_extra: dict, requests: int, client_counts: list[int]):
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        env = service_env(data_dir, extra={"GIF_RUNNER": "none", "GIF_LOG_LEVEL": "warning",
                                           **env_extra})
        with live_server(data_dir, env=env) as server:
            setup = server.client()
            model_id, dataset_id = _upload(setup, Path(tmp) / "files")
            run = f"bench-{secrets.token_hex(4)}"

            def body(i: int) -> dict:
                request = digits.quick_request({"kind": "remove_class", "class": i % 10}, seed=i)
                return {"model_id": model_id, "train_dataset_id": dataset_id, **request}

            one_job = setup.post("/v1/jobs", json=body(0)).raise_for_status().json()["id"]
            for clients in client_counts:
                tag = f"{run}-{clients}"
                kinds = {
                    "GET /healthz": lambda c, i: c.get("/healthz"),
                    "GET /v1/jobs/{id}": lambda c, i: c.get(f"/v1/jobs/{one_job}"),
                    "POST /v1/jobs": lambda c, i, tag=tag: c.post(
                        "/v1/jobs", json=body(i), headers={"Idempotency-Key": f"{tag}-{i}"}
                    ),
                    "POST /v1/jobs (replay)": lambda c, i, tag=tag: c.post(
                        "/v1/jobs", json=body(i), headers={"Idempotency-Key": f"{tag}-{i}"}
                    ),
                }
                results = {k: _run_batch(server, clients, requests, f) for k, f in kinds.items()}
                base = results["GET /healthz"]
                for kind, r in results.items():
                    rows.append((name, kind, clients, requests, r, r["p50"] / base["p50"],
                                 r["p99"] / base["p99"]))
    return rows


TARGET_RATIO = 3.0  # issue 10: POST /v1/jobs within 3x /healthz (p50 at 1 client, p99 at 20)


def target_lines(rows: list) -> list[str]:
    """The two targets, per database, as measured in this run (met or not)."""
    lines = []
    for name in dict.fromkeys(row[0] for row in rows):
        for clients, stat, column in ((1, "p50", 5), (20, "p99", 6)):
            found = [r for r in rows if r[:3] == (name, "POST /v1/jobs", clients)]
            if found:
                ratio = found[0][column]
                verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
                lines.append(f"{name}: POST /v1/jobs {stat} at {clients} client(s) = "
                             f"{ratio:.2f}x /healthz {stat} (target <= {TARGET_RATIO:g}x): "
                             f"{verdict}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", default="1,20")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    client_counts = [int(c) for c in args.clients.split(",")]

    rows = bench_deployment("sqlite", {}, args.requests, client_counts)
    if not args.no_postgres:
        import psycopg
        import sqlalchemy as sa

        url = sa.make_url(args.postgres)
        admin = url.set(drivername="postgresql").render_as_string(False)
        name = f"gif_bench_{secrets.token_hex(4)}"
        try:
            with psycopg.connect(admin, autocommit=True, connect_timeout=3) as connection:
                connection.execute(f'CREATE DATABASE "{name}"')
        except psycopg.OperationalError as err:
            print(f"PostgreSQL not reachable ({err}); SQLite only", file=sys.stderr)
        else:
            try:
                database_url = url.set(database=name).render_as_string(False)
                rows += bench_deployment(
                    "postgresql", {"GIF_DATABASE_URL": database_url}, args.requests,
                    client_counts,
                )
            finally:
                with psycopg.connect(admin, autocommit=True) as connection:
                    connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    header = ("database", "request", "clients", "n", "req/s", "p50 ms", "p99 ms", "max ms",
              "p50 / healthz", "p99 / healthz", "non-2xx")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    failures = 0
    for name, kind, clients, n, r, ratio, ratio99 in rows:
        failures += sum(r["bad"].values())
        print(
            f"| {name} | {kind} | {clients} | {n} | {r['throughput']:.0f} | "
            f"{1000 * r['p50']:.1f} | {1000 * r['p99']:.1f} | {1000 * r['max']:.1f} | "
            f"{ratio:.1f}× | {ratio99:.1f}× | {r['bad'] or 0} |"
        )
    print()
    for line in target_lines(rows):
        print(line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
