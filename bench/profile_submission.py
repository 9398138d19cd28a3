"""CPU and wall time of one request in-process: ``POST /v1/jobs`` against ``GET /healthz``.

    .venv/bin/python bench/profile_submission.py [--requests 300] [--postgres URL]
        [--profile submit|healthz] [--top 40] [--dump FILE]

The app of ``gif-service serve`` (``create_app``, runner ``none``, log level warning, the same
middleware stack) is called as an ASGI application by hand — no server, no client, no socket —
with the thread pool run inline (``anyio.to_thread.run_sync`` calls the function in place), so
the process's CPU time per request is the request's own and a profile sees all of it
(``--threads``: the real thread pool, as served). The
bodies are those of ``bench/bench_load.py`` (a new Idempotency-Key and seed each time).

Printed per kind: wall and CPU (``time.process_time``) per request, mean and median over
``--requests`` after a warm-up (the two kinds alternate in blocks of 20), and the ratio to
``/healthz``. With ``--postgres`` the app runs
on a fresh PostgreSQL database (dropped afterwards). ``--profile KIND``: cProfile over that
kind's requests, the ``--top`` entries by cumulative and by own time."""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


BLOCK = 20


async def _inline_run_sync(func, *args, abandon_on_cancel=False, cancellable=None,
                           limiter=None):
    return func(*args)


class Asgi:
    """Call an ASGI app with one prebuilt request: method, path, headers, body."""

    def __init__(self, app):
        self.app = app

    async def request(self, method: str, path: str, headers: dict[str, str],
                      body: bytes = b"") -> tuple[int, bytes]:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
            "root_path": "", "query_string": b"", "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000),
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1"))
                        for k, v in {**headers, "content-length": str(len(body))}.items()],
        }
        sent = False
        status = 0
        chunks: list[bytes] = []

        async def receive():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return status, b"".join(chunks)


def _setup(settings, client) -> tuple[dict[str, str], str, str]:
    """An API key, a model and a dataset (bench_load's), uploaded through the app."""
    from service.auth import create_key
    from service.db.session import engine_from_settings, make_session_factory, session_scope
    from tests.worker import digits

    engine = engine_from_settings(settings)
    with session_scope(make_session_factory(engine)) as session:
        key = create_key(session, "bench")
    engine.dispose()
    headers = {"Authorization": f"Bearer {key}"}
    x, y = digits.digits_arrays(300)
    with tempfile.TemporaryDirectory() as tmp:
        model_path, data_path = digits.write_files(
            Path(tmp), digits.train_mlp(x, y, steps=5), x, y)
        model = client.post("/v1/models", headers=headers, files={
            "file": ("m.safetensors", model_path.read_bytes(), "application/octet-stream")},
            data={"spec": json.dumps(digits.MLP_SPEC)})
        dataset = client.post("/v1/datasets", headers=headers, files={
            "file": ("d.npz", data_path.read_bytes(), "application/octet-stream")},
            data={"name": "bench"})
    model.raise_for_status()
    dataset.raise_for_status()
    return headers, model.json()["id"], dataset.json()["id"]


def run(database_url: str | None, requests: int, profile: str | None, top: int,
        inline: bool = True, dump: str | None = None) -> None:
    import anyio.to_thread
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.db.migrate import upgrade
    from service.observability import configure_logging
    from service.settings import Settings
    from tests.worker import digits

    configure_logging("warning")
    with tempfile.TemporaryDirectory() as tmp:
        extra = {"database_url": database_url} if database_url else {}
        settings = Settings(data_dir=Path(tmp) / "data", runner="none", log_level="warning",
                            **extra)
        upgrade(settings)
        app = create_app(settings)
        with TestClient(app) as client:  # the lifespan runs: the app as served
            headers, model_id, dataset_id = _setup(settings, client)
            if inline:
                anyio.to_thread.run_sync = _inline_run_sync
            asgi = Asgi(app)
            run_tag = secrets.token_hex(4)
            json_headers = {**headers, "content-type": "application/json"}

            def submit(i: int):
                request = digits.quick_request({"kind": "remove_class", "class": i % 10}, seed=i)
                body = json.dumps({"model_id": model_id, "train_dataset_id": dataset_id,
                                   **request}).encode()
                return asgi.request("POST", "/v1/jobs",
                                    {**json_headers, "Idempotency-Key": f"{run_tag}-{i}"}, body)

            kinds = {
                "GET /healthz": lambda i: asgi.request("GET", "/healthz", {}),
                "POST /v1/jobs": submit,
            }

            async def measure(kind: str, start: int, n: int, profiler=None):
                walls, cpus = [], []
                for i in range(start, start + n):
                    call = kinds[kind](i)
                    w, c = time.perf_counter(), time.process_time()
                    if profiler is not None:
                        profiler.enable()
                    status, body = await call
                    if profiler is not None:
                        profiler.disable()
                    cpus.append(time.process_time() - c)
                    walls.append(time.perf_counter() - w)
                    if not 200 <= status < 300:
                        raise SystemExit(f"{kind}: {status} {body[:300]!r}")
                return walls, cpus

            async def main():
                results = {kind: ([], []) for kind in kinds}
                profilers = {kind: cProfile.Profile() if kind.endswith(profile or "-") else None
                             for kind in kinds}
                offset = 0
                for kind in kinds:  # warm-up: statement caches, first connections
                    await measure(kind, offset, 30)
                    offset += 30
                # The kinds alternate in blocks of BLOCK requests, so that a change of the
                # machine's speed during the run (other work on it) weighs on both alike.
                for _ in range(max(1, requests // BLOCK)):
                    for kind in kinds:
                        walls, cpus = await measure(kind, offset, BLOCK, profilers[kind])
                        results[kind][0].extend(walls)
                        results[kind][1].extend(cpus)
                        offset += BLOCK
                for profiler in profilers.values():
                    if profiler is not None:
                        if dump:
                            profiler.dump_stats(dump)
                        for order in ("cumulative", "tottime"):
                            out = io.StringIO()
                            pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(top)
                            print(out.getvalue())
                return results

            results = client.portal.call(main)
            anyio.to_thread.run_sync = _original_run_sync
    base_cpu = statistics.median(results["GET /healthz"][1])
    base_wall = statistics.median(results["GET /healthz"][0])
    print(f"database: {'postgresql' if database_url else 'sqlite'}, {requests} requests a kind, "
          f"thread pool {'inline' if inline else 'real'}, pid {os.getpid()}")
    print("| request | wall ms mean | wall ms p50 | CPU ms mean | CPU ms p50 | wall p50 / "
          "healthz | CPU p50 / healthz |")
    print("|---|---|---|---|---|---|---|")
    for kind, (walls, cpus) in results.items():
        print(f"| {kind} | {1000 * statistics.mean(walls):.2f} | "
              f"{1000 * statistics.median(walls):.2f} | {1000 * statistics.mean(cpus):.2f} | "
              f"{1000 * statistics.median(cpus):.2f} | "
              f"{statistics.median(walls) / base_wall:.1f}× | "
              f"{statistics.median(cpus) / base_cpu:.1f}× |")


_original_run_sync = None


def main() -> int:
    global _original_run_sync
    import anyio.to_thread

    _original_run_sync = anyio.to_thread.run_sync
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--postgres", default=None,
                        help="a PostgreSQL server URL: run on a fresh database there")
    parser.add_argument("--profile", choices=("submit", "healthz"), default=None)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--dump", default=None,
                        help="with --profile: also write the cProfile stats to this file "
                             "(for pstats: callers, callees)")
    parser.add_argument("--threads", action="store_true",
                        help="run the thread pool as served (each hop a thread wake-up) "
                             "instead of inline")
    args = parser.parse_args()
    profile = {"submit": "jobs", "healthz": "healthz"}.get(args.profile)
    if args.postgres is None:
        run(None, args.requests, profile, args.top, not args.threads, args.dump)
        return 0
    import psycopg
    import sqlalchemy as sa

    url = sa.make_url(args.postgres)
    admin = url.set(drivername="postgresql").render_as_string(False)
    name = f"gif_profile_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        run(url.set(database=name).render_as_string(False), args.requests, profile, args.top,
            not args.threads, args.dump)
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
