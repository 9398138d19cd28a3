"""Shared test set-up: markers, and the rule that a missing PostgreSQL/Redis skips locally but
fails in CI (CI=true), never silently passes."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from collections.abc import Iterator

import pytest
import torch

IN_CI = os.environ.get("CI") == "true"
POSTGRES_URL = os.environ.get(
    "GIF_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("GIF_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def pytest_addoption(parser):
    parser.addoption(
        "--runslow", action="store_true", help="run the long experiments (slow marker)"
    )


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow: pass --runslow")
    skip_cuda = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (locally) or fail (CI) when a real service is not listening."""
    if _port_open(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if IN_CI:
        pytest.fail(message + " (CI=true: a missing service is a failure)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    return POSTGRES_URL


def admin_dsn(sqlalchemy_url: str) -> str:
    """A libpq DSN for psycopg from a SQLAlchemy URL (``postgresql+psycopg://…``)."""
    import sqlalchemy as sa

    return sa.make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(False)


@contextlib.contextmanager
def fresh_postgres_database(postgres_url: str, prefix: str = "gif_test") -> Iterator[str]:
    """A new, empty database on the shared PostgreSQL server, as a SQLAlchemy URL; dropped on
    exit (``WITH (FORCE)``: a connection a test left open does not keep it alive). The one
    place the tests create databases."""
    import psycopg
    import sqlalchemy as sa

    name = f"{prefix}_{secrets.token_hex(6)}"
    admin = admin_dsn(postgres_url)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def new_postgres_url(postgres_url) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (``fresh_postgres_database``)."""
    with fresh_postgres_database(postgres_url) as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    require_service("Redis", "127.0.0.1", 6379)
    return REDIS_URL


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (``pytest.mark.usefixtures("one_thread")``): two
    threads on a shared, loaded 2-core machine spin-wait, up to 20x slower. Restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield
