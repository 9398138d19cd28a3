"""The PostgreSQL pool's pre-ping (service/db/session.py): a pooled connection whose server
session ended (as in a server restart) is replaced on checkout, never handed to a request; a
quiet live one is handed out without a round trip."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from service.db.session import _quiet, make_engine

pytestmark = pytest.mark.services


@pytest.fixture
def engine(postgres_url):
    engine = make_engine(postgres_url, pool_size=3)
    yield engine
    engine.dispose()


def _backend_pids(engine: sa.Engine, n: int) -> list[int]:
    """Open ``n`` pooled connections at once and return their server process ids."""
    connections = [engine.connect() for _ in range(n)]
    pids = [c.exec_driver_sql("SELECT pg_backend_pid()").scalar() for c in connections]
    for connection in connections:
        connection.close()
    return pids


def _terminate(postgres_url: str, pids: list[int]) -> None:
    """End those server sessions, as a restart ends all of them, and wait until they are gone."""
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as connection:
        for pid in pids:
            assert connection.exec_driver_sql(f"SELECT pg_terminate_backend({pid})").scalar()
        deadline = time.monotonic() + 10
        while connection.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%(pids)s)", {"pids": pids}
        ).scalar():
            assert time.monotonic() < deadline, "terminated backends still listed"
            time.sleep(0.05)
    admin.dispose()


def test_sessions_ended_by_the_server_are_replaced_on_checkout(engine, postgres_url):
    old = _backend_pids(engine, 3)
    _terminate(postgres_url, old)
    for _ in range(3):  # every pooled connection was dead: each checkout gets a live one
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT 1").scalar() == 1
            assert connection.exec_driver_sql("SELECT pg_backend_pid()").scalar() not in old


def test_a_quiet_connection_is_alive_and_an_ended_one_is_not(engine, postgres_url):
    with engine.connect() as connection:
        dbapi = connection.connection.dbapi_connection
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        connection.rollback()
        assert _quiet(dbapi)  # idle, nothing on the socket: no ping needed
        _terminate(postgres_url, [pid])
        time.sleep(0.1)  # the server's FATAL message and the close reach the socket
        assert not _quiet(dbapi)  # readable: the real ping runs, fails, the pool reconnects
        connection.invalidate()


def test_a_connection_inside_a_transaction_is_not_quiet(engine):
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")  # psycopg opened a transaction: not idle
        assert not _quiet(connection.connection.dbapi_connection)
