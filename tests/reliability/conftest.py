"""Fixtures of the reliability tests: real services only (tests/live_server.py).

- ``upload_files``: the tiny digits MLP and its training data, as files a client uploads;
- ``make_database``: a fresh PostgreSQL database per call on the shared server (dropped at the
  end of the session), so each deployment starts empty;
- ``own_redis``: a throwaway ``redis-server`` on a free port started by the tests, so broker
  outages and killed workers never touch the Redis everyone else uses;
- ``distributed``: one API on those two for the session (tests start their own workers);
- ``embedded``: one embedded API (SQLite, local runner) for the session; ``uploaded``: the
  digits model and dataset on it.

PostgreSQL/Redis missing: skip locally, FAIL in CI (tests/conftest.py)."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis
import sqlalchemy as sa

from tests.conftest import IN_CI, admin_dsn, fresh_postgres_database
from tests.live_server import (
    LiveProcess,
    LiveServer,
    free_port,
    live_server,
    live_worker,
    service_env,
)
from tests.reliability.helpers import upload_dataset, upload_model
from tests.worker import digits

# Heartbeats every second: a dead worker is noticed after 3 s (STALE_HEARTBEATS).
FAST_ENV = {"GIF_HEARTBEAT_INTERVAL_S": "1", "GIF_LOG_LEVEL": "info"}
UPLOAD_CAP = 2 * 1024 * 1024


@dataclass(frozen=True)
class Files:
    model: Path
    data: Path
    state_dict: dict


@pytest.fixture(scope="session")
def upload_files(tmp_path_factory) -> Files:
    x, y = digits.digits_arrays()
    state = digits.train_mlp(x, y)
    model, data = digits.write_files(tmp_path_factory.mktemp("uploads"), state, x, y)
    return Files(model=model, data=data, state_dict=state)


@pytest.fixture(scope="session")
def make_database(postgres_url) -> Iterator[Callable[[], str]]:
    """Call it for a new empty PostgreSQL database (its SQLAlchemy URL); all are dropped at
    the session's end."""
    with contextlib.ExitStack() as stack:
        yield lambda: stack.enter_context(fresh_postgres_database(postgres_url, "gif_rel"))


def set_database_connections(postgres_admin_url: str, database_url: str, allow: bool) -> None:
    """A database outage without stopping the shared server: refuse (and cut) every connection
    to this one database, or allow them again."""
    name = sa.make_url(database_url).database
    with psycopg.connect(admin_dsn(postgres_admin_url), autocommit=True) as connection:
        connection.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}')
        if not allow:
            connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )


class RedisInstance:
    """A ``redis-server`` of our own (no persistence) that tests may stop and start again."""

    def __init__(self, directory: Path):
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.1)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        """An outage: ``redis-cli shutdown nosave`` (what the brief describes)."""
        subprocess.run(
            ["redis-cli", "-p", str(self.port), "shutdown", "nosave"],
            capture_output=True,
            timeout=10,
        )
        if self.process is not None:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


@pytest.fixture(scope="session")
def own_redis(redis_url, tmp_path_factory) -> Iterator[RedisInstance]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        message = "redis-server/redis-cli are not installed"
        if IN_CI:
            pytest.fail(message + " (CI=true: a missing service is a failure)")
        pytest.skip(message)
    instance = RedisInstance(tmp_path_factory.mktemp("redis"))
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="session")
def distributed(tmp_path_factory, make_database, own_redis) -> Iterator[LiveServer]:
    """One ``gif-service serve`` for the session in distributed mode: a fresh PostgreSQL
    database, our own Redis, a unique queue. Tests start (and kill) their own workers with
    ``live_worker(distributed.env)``; the API (and its reaper) stays up throughout."""
    data_dir = tmp_path_factory.mktemp("distributed") / "data"
    env = service_env(
        data_dir,
        database_url=make_database(),
        broker_url=own_redis.url,
        extra={**FAST_ENV, "GIF_JOB_QUEUE": f"gif-rel-{secrets.token_hex(6)}"},
    )
    with live_server(data_dir, env=env) as server:
        yield server


@pytest.fixture(scope="session")
def embedded(tmp_path_factory) -> Iterator[LiveServer]:
    """One embedded ``gif-service serve`` (SQLite, local runner) for the session, with a small
    upload cap (2 MiB) so size limits are cheap to test."""
    data_dir = tmp_path_factory.mktemp("embedded") / "data"
    env = service_env(data_dir, extra={**FAST_ENV, "GIF_MAX_UPLOAD_BYTES": str(UPLOAD_CAP)})
    with live_server(data_dir, env=env) as server:
        yield server


@pytest.fixture(scope="session")
def uploaded(embedded, upload_files) -> dict:
    """The digits model and dataset uploaded once to the embedded server."""
    client = embedded.client(timeout=300)  # the first upload imports torch on a loaded machine
    return {
        "model": upload_model(client, upload_files.model),
        "dataset": upload_dataset(client, upload_files.data),
    }


@pytest.fixture(scope="module")
def module_worker(distributed) -> Iterator[LiveProcess]:
    """A Celery worker for one test module on the distributed server (stopped at its end, so
    the worker-killing tests of other modules control which worker runs their jobs)."""
    with live_worker(distributed.env, name="module-worker", log_dir=distributed.data_dir) as worker:
        yield worker
