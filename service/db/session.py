"""Engines and sessions built from :class:`~service.settings.Settings`.

SQLite (the embedded default) gets WAL journaling (readers never block the one writer),
``synchronous=NORMAL`` (a commit is appended to the WAL without an fsync; the WAL is synced at
each checkpoint: a committed transaction survives a crash of any process, and the database stays
consistent after a power loss or OS crash, which may lose the last commits before it — the
documented setting for WAL, and what lets the one writer commit in microseconds instead of an
fsync each), enforced foreign keys and a busy timeout so concurrent writers wait instead of
failing. PostgreSQL gets ``pool_pre_ping`` so a restarted server does not surface as errors; the
ping costs no round trip while the connection is quiet (:func:`_quiet_or_ping`).

SQLite's writers of one process queue on a lock of this process (:class:`SerialWriterConnection`)
rather than on SQLite's busy handler: a writer refused by the write lock sleeps 1, 2, 5, 10, …
up to 100 ms between retries whatever the holder needs, which under 20 concurrent submissions
made the slowest wait ten times the median. Other processes (the local runner's job process,
the CLI) still meet SQLite's own lock and its busy timeout.

Both keep up to ``pool_size`` connections open (``GIF_DATABASE_POOL_SIZE``): SQLAlchemy's
default of 5 (plus 10 that are closed again after each use) made every request past the fifth
concurrent one open a connection — a new server process on PostgreSQL."""

from __future__ import annotations

import select
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from service.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000
DEFAULT_POOL_SIZE = 20


# The statements with which pysqlite opens its implicit transaction: the SQLite write lock is
# taken from the first of them to the commit or rollback.
_WRITE_VERBS = ("INSERT", "UPDATE", "DELETE", "REPLACE")
_write_locks: dict[str, threading.Lock] = {}
_write_locks_guard = threading.Lock()


def _write_lock(path: str) -> threading.Lock:
    """The one in-process writer lock of the database file ``path``."""
    key = str(Path(path).resolve())
    with _write_locks_guard:
        return _write_locks.setdefault(key, threading.Lock())


class _SerialWriterCursor(sqlite3.Cursor):
    def execute(self, sql, parameters=(), /):
        if sql.lstrip()[:7].upper().startswith(_WRITE_VERBS):
            self.connection.before_write()
        return super().execute(sql, parameters)

    def executemany(self, sql, parameters, /):
        if sql.lstrip()[:7].upper().startswith(_WRITE_VERBS):
            self.connection.before_write()
        return super().executemany(sql, parameters)


class SerialWriterConnection(sqlite3.Connection):
    """A pysqlite connection whose write transactions hold the process's lock of its file
    (:func:`_write_lock`) from their first write to their commit or rollback — exactly the
    span SQLite holds its own write lock — so the process's writers wait on a lock that wakes
    the next one the moment it is free. Waiting past the busy timeout raises SQLite's own
    "database is locked"."""

    write_lock: threading.Lock | None = None  # set on connect (service.db.session)
    _holds_write_lock = False

    def cursor(self, factory=None):  # SQLAlchemy executes every statement on a cursor()
        return super().cursor(factory or _SerialWriterCursor)

    def before_write(self) -> None:
        if self._holds_write_lock or self.write_lock is None:
            return
        if not self.write_lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
            raise sqlite3.OperationalError("database is locked")
        self._holds_write_lock = True

    def _release_write_lock(self) -> None:
        if self._holds_write_lock:
            self._holds_write_lock = False
            assert self.write_lock is not None
            self.write_lock.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._release_write_lock()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._release_write_lock()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._release_write_lock()


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def make_engine(database_url: str, *, pool_size: int = DEFAULT_POOL_SIZE) -> sa.Engine:
    """An engine for ``database_url`` with the per-dialect settings above."""
    url = sa.make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            pool_args = {"pool_size": pool_size, "max_overflow": pool_size}
            lock = _write_lock(url.database)
        else:
            pool_args = {}  # an in-memory database keeps its own pool (one connection)
            lock = None
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                          "factory": SerialWriterConnection},
            **pool_args,
        )

        def on_connect(dbapi_connection, record) -> None:
            dbapi_connection.write_lock = lock
            _sqlite_pragmas(dbapi_connection, record)

        sa.event.listen(engine, "connect", on_connect)
        return engine
    engine = sa.create_engine(
        url, pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size
    )
    engine.dialect.do_ping = _quiet_or_ping(engine.dialect.do_ping)  # type: ignore[method-assign]
    return engine


def _quiet_or_ping(ping):
    """The pool's pre-ping (``ping``: the dialect's ``SELECT 1``), skipped for a psycopg
    connection that is provably alive without asking the server: libpq holds it idle and open,
    and nothing has arrived on its socket since its last answer. A server that ends a session
    — a restart or shutdown, ``pg_terminate_backend``, ``idle_session_timeout`` — sends the
    client an error and closes the socket, which makes it readable; so does a reset. Anything
    on the socket, or a connection this cannot inspect (another driver, no ``poll``), gets the
    real ping, and a failed ping invalidates the pool as before.

    Each checkout's ping was a round trip: two of a submission's seven on PostgreSQL, one of an
    authenticated GET's three."""

    def do_ping(dbapi_connection) -> bool:
        if _quiet(dbapi_connection):
            return True
        return ping(dbapi_connection)

    return do_ping


def _quiet(dbapi_connection) -> bool:
    poll = getattr(select, "poll", None)
    pgconn = getattr(dbapi_connection, "pgconn", None)
    if poll is None or pgconn is None:
        return False
    from psycopg import pq

    try:
        if dbapi_connection.closed or dbapi_connection.broken:
            return False
        if (pgconn.status != pq.ConnStatus.OK
                or pgconn.transaction_status != pq.TransactionStatus.IDLE):
            return False
        poller = poll()
        poller.register(pgconn.socket, select.POLLIN | select.POLLPRI)  # ERR and HUP: always
        return not poller.poll(0)
    except Exception:  # noqa: BLE001 - whatever went wrong, the real ping decides
        return False


def engine_from_settings(settings: Settings) -> sa.Engine:
    """The engine for ``settings.database_url``, pooling ``settings.database_pool_size``."""
    assert settings.database_url is not None  # filled in by Settings
    return make_engine(settings.database_url, pool_size=settings.database_pool_size)


def autocommit_reads(engine: sa.Engine) -> sa.Engine:
    """``engine`` (the same pool) in autocommit mode, for a request that runs one statement (or
    one read and an independent write): no transaction to open and close around it — on
    PostgreSQL a BEGIN and a ROLLBACK, two round trips of the four an authentication took."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def engine_of(factory: sessionmaker[Session]) -> sa.Engine:
    """The engine a session factory binds: for a hot path that runs Core statements on a plain
    connection (a session's own bookkeeping costs more than a short statement)."""
    return factory.kw["bind"]


def make_session_factory(engine: sa.Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit (handlers serialise after committing)."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session committed on success and rolled back on any error."""
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


class LoopReadUnavailable(Exception):
    """:meth:`LoopReader.read` cannot answer now: run the read in the thread pool instead."""


class LoopReader:
    """One read-only connection to a SQLite file, for the event loop's own thread: the
    one-statement reads every request makes (the API key's lookup, a job by id) run there,
    without the thread-pool hop — on this 2-core machine a hop (a thread wake-up each way and
    the request's work moved between threads) cost more than the read itself.

    It can never block the loop on a writer: the connection is ``query_only`` (a write raises)
    and has no busy timeout, and under WAL a reader takes no lock a writer holds, so SQLite
    answers at once or says SQLITE_BUSY (a WAL recovery, a restart checkpoint), and then, like
    when the connection is in use (a second event loop), :meth:`read` raises
    :class:`LoopReadUnavailable` and the caller reads in the thread pool as before."""

    def __init__(self, database_url: str):
        self.engine = sa.create_engine(
            database_url,
            poolclass=sa.pool.StaticPool,
            connect_args={"check_same_thread": False, "timeout": 0},
        )
        self._lock = threading.Lock()

        def on_connect(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA query_only=ON")
            cursor.execute("PRAGMA busy_timeout=0")
            cursor.close()

        sa.event.listen(self.engine, "connect", on_connect)

    def read(self, func, *args):
        """``func(connection, *args)`` on the loop's connection; what it raises, it raises,
        but a database error (busy, or anything SQLite refuses) is :class:`LoopReadUnavailable`:
        the thread pool's connection then answers or raises it as it always did."""
        if not self._lock.acquire(blocking=False):
            raise LoopReadUnavailable("the loop's connection is in use")
        try:
            with self.engine.connect() as connection:
                return func(connection, *args)
        except sa.exc.DBAPIError as err:
            raise LoopReadUnavailable(str(err)) from err
        finally:
            self._lock.release()

    def dispose(self) -> None:
        self.engine.dispose()


async def read_once(reader: LoopReader | None, engine: sa.Engine, func, *args):
    """``func(connection, *args)``, a one-statement read: on the loop's own connection when
    ``reader`` can answer (no thread hop), else on a connection of ``engine`` in the thread
    pool (PostgreSQL, or a SQLite reader that is busy or in use)."""
    if reader is not None:
        try:
            return reader.read(func, *args)
        except LoopReadUnavailable:
            pass

    def on_a_thread():
        with engine.connect() as connection:
            return func(connection, *args)

    return await run_in_threadpool(on_a_thread)


def loop_reader(engine: sa.Engine) -> LoopReader | None:
    """A :class:`LoopReader` for a SQLite file database; None for any other (PostgreSQL's reads
    are network round trips: they stay in the thread pool) or an in-memory one (a second
    connection would see another database)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return LoopReader(url.render_as_string(hide_password=False))
