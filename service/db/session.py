"""Engines and sessions built from :class:`~service.settings.Settings`.

SQLite (the embedded default) gets WAL journaling (readers never block the one writer),
``synchronous=NORMAL`` (a commit is appended to the WAL without an fsync; the WAL is synced at
each checkpoint: a committed transaction survives a crash of any process, and the database stays
consistent after a power loss or OS crash, which may lose the last commits before it — the
documented setting for WAL, and what lets the one writer commit in microseconds instead of an
fsync each), enforced foreign keys and a busy timeout so concurrent writers wait instead of
failing. PostgreSQL gets ``pool_pre_ping`` so a restarted server does not surface as errors.

Both keep up to ``pool_size`` connections open (``GIF_DATABASE_POOL_SIZE``): SQLAlchemy's
default of 5 (plus 10 that are closed again after each use) made every request past the fifth
concurrent one open a connection — a new server process on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000
DEFAULT_POOL_SIZE = 20


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
        else:
            pool_args = {}  # an in-memory database keeps its own pool (one connection)
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            **pool_args,
        )
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(
        url, pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size
    )


def engine_from_settings(settings: Settings) -> sa.Engine:
    """The engine for ``settings.database_url``, pooling ``settings.database_pool_size``."""
    assert settings.database_url is not None  # filled in by Settings
    return make_engine(settings.database_url, pool_size=settings.database_pool_size)


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
