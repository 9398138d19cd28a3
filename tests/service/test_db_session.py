"""SQLite engines (service/db/session.py): WAL with synchronous=NORMAL, and the process's writers
queued on one lock per database file, held from a transaction's first write to its end."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from service.db.session import _write_lock, make_engine


@pytest.fixture
def engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")
    yield engine
    engine.dispose()


def test_wal_with_synchronous_normal(engine):
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_concurrent_writers_all_commit_and_leave_the_lock_free(engine, tmp_path):
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(25):
                with engine.begin() as connection:
                    connection.exec_driver_sql("SELECT count(*) FROM t").scalar()
                    connection.exec_driver_sql(f"INSERT INTO t (v) VALUES ('{n}-{i}')")
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM t").scalar() == 200
    lock = _write_lock(str(tmp_path / "x.db"))
    assert lock.acquire(blocking=False)  # nobody holds it
    lock.release()


def test_a_failed_write_releases_the_lock_with_its_rollback(engine, tmp_path):
    lock = _write_lock(str(tmp_path / "x.db"))
    with engine.connect() as connection:
        connection.exec_driver_sql("INSERT INTO t (v) VALUES ('a')")
        assert not lock.acquire(blocking=False)  # held from the first write ...
        connection.commit()
    assert lock.acquire(blocking=False)  # ... to the commit
    lock.release()
    with engine.connect() as connection, pytest.raises(sa.exc.IntegrityError):
        connection.exec_driver_sql("INSERT INTO t (v) VALUES ('a')")
    assert lock.acquire(blocking=False)  # the connection went back to the pool, rolled back
    lock.release()
    with engine.connect() as connection:  # reads never take it
        connection.exec_driver_sql("SELECT * FROM t").all()
        assert lock.acquire(blocking=False)
        lock.release()
