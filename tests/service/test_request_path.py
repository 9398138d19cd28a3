"""What one request costs on SQLite (docs/design.md, "The request path"): the statements a
submission and a job read run, and where — the API key's lookup and a job by id on the event
loop's own read-only connection (``LoopReader``), the submission's reads and insert in one
commit on the loop's writer (``LoopWriter``), no thread hop — and that the loop's
connections change none of what the answers are: a revoked key is refused at once,
``last_used_at`` is still refreshed, an occupied loop connection, a taken write lock or a
busy database falls back to the thread pool (which waits, as before), the WAL is still
checkpointed."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from service.auth import revoke_key
from service.db.models import ApiKey, utcnow
from service.db.session import LoopReadUnavailable, _write_lock, session_scope
from service.schemas import JobCreate
from tests.service.conftest import assert_problem, bearer


def _job_body(uploaded, **extra) -> dict:
    return {"model_id": uploaded.model_id, "train_dataset_id": uploaded.dataset_id,
            "edit": {"kind": "remove_class", "class": 1}, **extra}


class Statements:
    """The statements each engine's cursors execute for requests (connect-time PRAGMAs and
    the app's background threads aside)."""

    def __init__(self, background: bool = False, **engines: sa.Engine):
        self.seen: dict[str, list[str]] = {name: [] for name in engines}
        self._hooks = []
        for name, engine in engines.items():
            def hook(conn, cursor, statement, params, context, executemany, name=name):
                if not background and threading.current_thread().name.startswith("gif-"):
                    return  # the app's background threads (webhook sender, retention, ...)
                self.seen[name].append(statement.split()[0].upper())
            sa.event.listen(engine, "before_cursor_execute", hook)
            self._hooks.append((engine, hook))

    def clear(self) -> None:
        for statements in self.seen.values():
            statements.clear()

    def close(self) -> None:
        for engine, hook in self._hooks:
            sa.event.remove(engine, "before_cursor_execute", hook)


@pytest.fixture
def statements(app):
    recorder = Statements(loop=app.state.loop_reader.engine, writer=app.state.loop_writer.engine,
                          pool=app.state.engine)
    yield recorder
    recorder.close()


def test_a_submission_is_three_statements_and_its_job_read_one_none_in_the_pool(
    client, alice, uploaded, statements
):
    statements.clear()
    created = client.post("/v1/jobs", headers={**alice, "Idempotency-Key": "k1"},
                          json=_job_body(uploaded))
    assert created.status_code == 202, created.text
    # The key's lookup on the loop's reader; the one read of everything the submission decides
    # on, and the insert, on its writer; nothing in the thread pool.
    assert statements.seen == {"loop": ["SELECT"], "writer": ["SELECT", "INSERT"], "pool": []}

    statements.clear()
    replay = client.post("/v1/jobs", headers={**alice, "Idempotency-Key": "k1"},
                         json=_job_body(uploaded))
    assert replay.status_code == 200 and replay.json() == created.json()
    assert statements.seen == {"loop": ["SELECT"], "writer": ["SELECT", "SELECT"], "pool": []}

    statements.clear()
    read = client.get(f"/v1/jobs/{created.json()['id']}", headers=alice)
    assert read.status_code == 200 and read.json() == created.json()
    assert statements.seen == {"loop": ["SELECT", "SELECT"], "writer": [], "pool": []}
    assert_problem(client.get("/v1/jobs/job_missing", headers=alice), 404)


def test_the_loop_connection_cannot_write(app):
    with pytest.raises(LoopReadUnavailable, match="readonly"):
        app.state.loop_reader.read(lambda c: c.exec_driver_sql("DELETE FROM jobs"))


def test_a_revoked_key_is_refused_at_once_on_the_loop_path(client, session_factory, make_key):
    key = make_key("erin")
    assert client.get("/v1/models", headers=bearer(key)).status_code == 200
    with session_scope(session_factory) as session:
        assert revoke_key(session, key[:12]) == 1
    assert_problem(client.get("/v1/models", headers=bearer(key)), 401)


def test_a_stale_last_used_at_is_still_refreshed(client, session_factory, make_key, app,
                                                 statements):
    key = make_key("gina")
    old = utcnow() - timedelta(hours=1)
    with session_scope(session_factory) as session:
        session.execute(sa.update(ApiKey).where(ApiKey.prefix == key[:12])
                        .values(last_used_at=old))
    statements.clear()
    assert client.get("/v1/models", headers=bearer(key)).status_code == 200
    assert statements.seen["pool"][0] == "UPDATE"  # the write in the thread pool
    with session_factory() as session:
        last_used = session.scalar(sa.select(ApiKey.last_used_at)
                                   .where(ApiKey.prefix == key[:12]))
    assert last_used > old + timedelta(minutes=59)


def test_an_occupied_loop_connection_falls_back_to_the_thread_pool(
    client, alice, uploaded, app, statements
):
    job = client.post("/v1/jobs", headers=alice, json=_job_body(uploaded)).json()
    lock = app.state.loop_reader._lock
    assert lock.acquire(blocking=False)
    try:
        statements.clear()
        read = client.get(f"/v1/jobs/{job['id']}", headers=alice)
        assert read.status_code == 200 and read.json() == job
        assert statements.seen == {"loop": [], "writer": [], "pool": ["SELECT", "SELECT"]}
        assert_problem(client.get(f"/v1/jobs/{job['id']}", headers={
            "Authorization": "Bearer gif_not-a-real-key-at-all"}), 401)
    finally:
        lock.release()


def test_one_dump_gives_the_fingerprint_and_the_stored_request(uploaded):
    body = JobCreate.model_validate(_job_body(
        uploaded, metadata={"ticket": "T-1"},
        webhook={"url": "https://example.com/hook", "events": ["succeeded"]},
        eval={"datasets": {"test": uploaded.dataset_id}},
    ))
    fingerprint, normalised = body.fingerprint_and_normalised()
    assert fingerprint == body.fingerprint()
    assert normalised == body.normalised()
    assert list(normalised) == list(body.normalised())  # the same key order: the same JSON
    assert "metadata" not in normalised and fingerprint["metadata"] == {"ticket": "T-1"}


def _committed(session_factory, job_id: str) -> bool:
    with session_factory() as session:  # another connection: sees only what is committed
        return session.scalar(sa.select(sa.func.count()).select_from(sa.table("jobs"))
                              .where(sa.column("id") == job_id)) == 1


def _release_after_the_loop_tried(statements: Statements, release) -> None:
    """``release()`` 0.2 s after the loop's writer tried its insert (so the fallback, if any,
    has to wait for it; a loop that waited itself gets it then and leaves the pool unused)."""

    def run() -> None:
        deadline = time.monotonic() + 10
        while "INSERT" not in statements.seen["writer"] and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.2)
        release()

    threading.Thread(target=run, daemon=True).start()


def test_a_taken_write_lock_sends_the_submission_to_the_thread_pool_which_waits(
    client, alice, uploaded, app, settings, statements, session_factory
):
    lock = _write_lock(settings.database_url.removeprefix("sqlite:///"))
    assert lock.acquire(blocking=False)  # another thread of this process is writing
    statements.clear()
    _release_after_the_loop_tried(statements, lock.release)
    created = client.post("/v1/jobs", headers=alice, json=_job_body(uploaded))
    assert created.status_code == 202, created.text
    assert statements.seen["pool"] == ["SELECT", "INSERT"]  # waited there for the lock
    # Its read ran on the loop's writer, its insert was refused the lock: rolled back.
    assert statements.seen["writer"] == ["SELECT", "INSERT"]
    assert _committed(session_factory, created.json()["id"])
    assert app.state.dispatcher.submitted[-1] == created.json()["id"]


def test_a_busy_database_sends_the_submission_to_the_thread_pool_which_waits(
    client, alice, uploaded, app, settings, statements, session_factory
):
    other = sqlite3.connect(settings.database_url.removeprefix("sqlite:///"),
                            isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process's writer holds SQLite's write lock
    statements.clear()
    _release_after_the_loop_tried(statements, other.rollback)
    created = client.post("/v1/jobs", headers=alice, json=_job_body(uploaded))
    other.close()
    assert created.status_code == 202, created.text
    assert statements.seen["writer"] == ["SELECT", "INSERT"]  # tried: SQLITE_BUSY at once
    assert statements.seen["pool"] == ["SELECT", "INSERT"]  # done: after the busy wait
    assert _committed(session_factory, created.json()["id"])
    with session_factory() as session:
        assert session.scalar(sa.text("SELECT count(*) FROM jobs")) == 1  # once, not twice


def test_the_loop_writer_still_gets_the_wal_checkpointed(client, alice, uploaded, app):
    app.state.loop_writer.CHECKPOINT_EVERY = 3
    everything = Statements(background=True, pool=app.state.engine)
    try:
        for _ in range(3):
            created = client.post("/v1/jobs", headers=alice, json=_job_body(uploaded))
            assert created.status_code == 202
        deadline = time.monotonic() + 5
        while "PRAGMA" not in everything.seen["pool"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "PRAGMA" in everything.seen["pool"]  # wal_checkpoint(PASSIVE), on its thread
    finally:
        everything.close()
