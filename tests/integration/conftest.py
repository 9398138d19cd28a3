"""Fixtures of the end-to-end tests: real ``gif-service`` processes (tests/live_server.py).

``live`` is parametrised over the two deployments and scoped to the module, so each mode's
server (and worker) starts once:

- ``embedded``: ``gif-service serve`` alone — SQLite and artifacts in a temp dir, the local
  runner executing jobs in spawned child processes;
- ``distributed``: ``gif-service serve`` with ``GIF_DATABASE_URL`` on a fresh PostgreSQL
  database (created for the session and dropped after) and ``GIF_BROKER_URL`` on the real Redis,
  plus one real ``gif-service worker`` Celery process, sharing the artifacts directory. A
  session-unique queue name keeps other test sessions' workers on the same Redis away.

PostgreSQL/Redis missing: the distributed cases skip locally and FAIL in CI (tests/conftest.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import fresh_postgres_database
from tests.live_server import LiveServer, live_server, live_worker, service_env
from tests.worker import digits

# Fast heartbeats and a generous time limit: tests see liveness quickly, nothing times out.
TEST_ENV = {"GIF_HEARTBEAT_INTERVAL_S": "1", "GIF_LOG_LEVEL": "info"}


@dataclass(frozen=True)
class Files:
    """What a client uploads: the trained tiny model, its data, and a broken twin."""

    model: Path
    data: Path
    overflowing_model: Path  # finite weights whose logits overflow: edits fail non_finite
    state_dict: dict


@pytest.fixture(scope="session")
def upload_files(tmp_path_factory) -> Files:
    x, y = digits.digits_arrays()
    state = digits.train_mlp(x, y)
    directory = tmp_path_factory.mktemp("uploads")
    model, data = digits.write_files(directory, state, x, y)
    overflowing = directory / "overflowing.safetensors"
    overflowing.write_bytes(digits.safetensors_bytes({k: v * 1e20 for k, v in state.items()}))
    return Files(model=model, data=data, overflowing_model=overflowing, state_dict=state)


@pytest.fixture(scope="session")
def fresh_postgres_url(postgres_url) -> Iterator[str]:
    """A new, empty PostgreSQL database for this session (dropped at the end)."""
    with fresh_postgres_database(postgres_url, "gif_it") as url:
        yield url


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def live(request, tmp_path_factory) -> Iterator[LiveServer]:
    """A running service in one of the two deployments (see the module docstring)."""
    data_dir = tmp_path_factory.mktemp(f"{request.param}-data")
    if request.param == "embedded":
        env = service_env(data_dir, extra=TEST_ENV)
        with live_server(data_dir, env=env) as server:
            yield server
        return
    database_url = request.getfixturevalue("fresh_postgres_url")
    broker_url = request.getfixturevalue("redis_url")
    env = service_env(
        data_dir,
        database_url=database_url,
        broker_url=broker_url,
        extra={**TEST_ENV, "GIF_JOB_QUEUE": f"gif-it-{secrets.token_hex(6)}"},
    )
    # The API migrates the database on start; the worker refuses an unmigrated one.
    with live_server(data_dir, env=env) as server, live_worker(env, log_dir=data_dir):
        yield server
