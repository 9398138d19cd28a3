"""What one request costs on SQLite (docs/design.md, "The request path"): the statements a
submission and a job read run, and where — the API key's lookup and a job by id on the event
loop's own read-only connection (``LoopReader``, no thread hop), the submission's reads and
insert on the pool in one commit — and that the loop's connection changes none of what the
answers are: a revoked key is refused at once, ``last_used_at`` is still refreshed, a busy or
occupied loop connection falls back to the thread pool."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from service.db.models import ApiKey, utcnow
from service.db.session import LoopReadUnavailable, session_scope
from service.schemas import JobCreate
from tests.service.conftest import assert_problem, bearer


def _job_body(uploaded, **extra) -> dict:
    return {"model_id": uploaded.model_id, "train_dataset_id": uploaded.dataset_id,
            "edit": {"kind": "remove_class", "class": 1}, **extra}


class Statements:
    """The statements each engine's cursors execute for requests (connect-time PRAGMAs aside):
    the app's background threads (``gif-webhooks`` polls the delivery queue, the reaper) are
    left out, or their polls would land in a request's count whenever their interval ends."""

    def __init__(self, **engines: sa.Engine):
        self.seen: dict[str, list[str]] = {name: [] for name in engines}
        self._hooks = []
        for name, engine in engines.items():
            def hook(conn, cursor, statement, params, context, executemany, name=name):
                if threading.current_thread().name.startswith("gif-"):
                    return
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
    recorder = Statements(loop=app.state.loop_reader.engine, pool=app.state.engine)
    yield recorder
    recorder.close()


def test_a_submission_is_three_statements_and_its_job_read_one_none_in_the_pool(
    client, alice, uploaded, statements
):
    statements.clear()
    created = client.post("/v1/jobs", headers={**alice, "Idempotency-Key": "k1"},
                          json=_job_body(uploaded))
    assert created.status_code == 202, created.text
    # The key's lookup on the loop; the one read of everything the submission decides on, and
    # the insert, on a pool connection.
    assert statements.seen == {"loop": ["SELECT"], "pool": ["SELECT", "INSERT"]}

    statements.clear()
    replay = client.post("/v1/jobs", headers={**alice, "Idempotency-Key": "k1"},
                         json=_job_body(uploaded))
    assert replay.status_code == 200 and replay.json() == created.json()
    assert statements.seen == {"loop": ["SELECT"], "pool": ["SELECT", "SELECT"]}

    statements.clear()
    read = client.get(f"/v1/jobs/{created.json()['id']}", headers=alice)
    assert read.status_code == 200 and read.json() == created.json()
    assert statements.seen == {"loop": ["SELECT", "SELECT"], "pool": []}
    assert_problem(client.get("/v1/jobs/job_missing", headers=alice), 404)


def test_the_loop_connection_cannot_write(app):
    with pytest.raises(LoopReadUnavailable, match="readonly"):
        app.state.loop_reader.read(lambda c: c.exec_driver_sql("DELETE FROM jobs"))


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
        assert statements.seen == {"loop": [], "pool": ["SELECT", "SELECT"]}
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
    assert fingerprint == body.model_dump(mode="json", by_alias=True)
    assert normalised == body.normalised()
    assert list(normalised) == list(body.normalised())  # the same key order: the same JSON
    assert "metadata" not in normalised and fingerprint["metadata"] == {"ticket": "T-1"}
