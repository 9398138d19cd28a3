"""What one short PostgreSQL read costs the API process, by the way it is made (µs, one process).

    .venv/bin/python bench/read_costs.py [--postgres URL] [--reads 2000]

One row (``SELECT 1, 'abc', now()``) read again and again from the PostgreSQL at ``--postgres``,
each way timed over ``--reads`` reads after a warm-up, wall and process CPU per read:

- ``thread hop``: ``starlette.concurrency.run_in_threadpool`` of a function that does nothing;
- ``engine``: a connection of the app's autocommit engine (``service.db.session``) checked out,
  the statement run, the connection checked in;
- ``held connection``: the statement on one connection kept checked out;
- ``engine in the thread pool``: ``engine`` inside ``run_in_threadpool`` (what a request's
  read costs today);
- ``raw psycopg``: a plain synchronous psycopg connection, no SQLAlchemy;
- ``raw psycopg async``: a plain ``psycopg.AsyncConnection`` awaited on the loop.

benchmarks.md ("Fifth round") quotes a run of this; the asyncio extension of SQLAlchemy, which
that round measured too, is not installed by the project (it was tried and reverted)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import psycopg
import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.db.session import autocommit_reads, make_engine  # noqa: E402

SQL = "SELECT 1 AS one, 'abc' AS s, now() AS t"
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


async def measure(name: str, read, reads: int) -> None:
    for _ in range(min(100, reads)):
        await read()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(reads):
        await read()
    print(f"| {name} | {(time.perf_counter() - wall) / reads * 1e6:.0f} | "
          f"{(time.process_time() - cpu) / reads * 1e6:.0f} |")


async def main_async(url: str, reads: int) -> None:
    engine = autocommit_reads(make_engine(url, pool_size=4))
    statement = sa.text(SQL)
    held = engine.connect()
    plain_url = sa.make_url(url).set(drivername="postgresql").render_as_string(
        hide_password=False)
    raw = psycopg.connect(plain_url, autocommit=True)
    raw_async = await psycopg.AsyncConnection.connect(plain_url, autocommit=True)

    def on_engine():
        with engine.connect() as connection:
            return connection.execute(statement).all()

    def on_raw():
        with raw.cursor() as cursor:
            cursor.execute(SQL)
            return cursor.fetchall()

    async def sync(func):
        return func()

    async def on_raw_async():
        async with raw_async.cursor() as cursor:
            await cursor.execute(SQL)
            return await cursor.fetchall()

    print("| read | wall µs | CPU µs |\n|---|---|---|")
    await measure("thread hop", lambda: run_in_threadpool(lambda: None), reads)
    await measure("engine", lambda: sync(on_engine), reads)
    await measure("held connection", lambda: sync(lambda: held.execute(statement).all()), reads)
    await measure("engine in the thread pool", lambda: run_in_threadpool(on_engine), reads)
    await measure("raw psycopg", lambda: sync(on_raw), reads)
    await measure("raw psycopg async", on_raw_async, reads)
    held.close()
    raw.close()
    await raw_async.close()
    engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES)
    parser.add_argument("--reads", type=int, default=2000)
    args = parser.parse_args(argv)
    asyncio.run(main_async(args.postgres, args.reads))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
