"""The reaper's decisions on a real (SQLite) database, without processes: which ``running``
jobs count as lost, what happens to each (requeue, ``worker_lost``, ``cancelled``), that a
requeue is sent once per attempt, and that its writes are fenced on the row it read. The live
version (a killed Celery worker) is in test_worker_loss.py."""

from __future__ import annotations

from datetime import timedelta

import pytest

from service.db.models import utcnow
from service.dispatch import NoneDispatcher
from tests.worker import digits
from tests.worker.conftest import make_worker_db
from worker.reaper import Reaper, end_stale_job, stale_running_jobs

STALE_S = 3.0


@pytest.fixture
def db(tmp_path):
    worker_db, engine = make_worker_db(tmp_path / "data")
    x, y = digits.digits_arrays(100)
    state = digits.train_mlp(x, y, steps=1)
    model, dataset = worker_db.add_model(state), worker_db.add_dataset(x, y)
    worker_db.request = digits.quick_request({"kind": "remove_class", "class": 1})
    worker_db.ids = (model.id, dataset.id)
    yield worker_db
    engine.dispose()


def _job(db, *, status="running", attempts=1, age_s=10.0, cancel=False) -> str:
    return db.add_job(
        *db.ids,
        db.request,
        status=status,
        attempts=attempts,
        heartbeat_at=utcnow() - timedelta(seconds=age_s),
        started_at=utcnow() - timedelta(seconds=age_s),
        cancel_requested=cancel,
    )


def test_sweep_requeues_fails_cancels_and_leaves_live_jobs(db):
    lost_once = _job(db, attempts=1)
    lost_twice = _job(db, attempts=2)
    lost_cancelled = _job(db, attempts=1, cancel=True)
    live = _job(db, attempts=1, age_s=0.5)
    queued = _job(db, status="queued", attempts=0)
    dispatcher = NoneDispatcher()
    reaper = Reaper(db.factory, dispatcher, stale_after_s=STALE_S, interval_s=1.0)

    report = reaper.sweep()

    assert report.requeued == [lost_once] and dispatcher.submitted == [lost_once]
    assert report.failed == [lost_twice] and report.cancelled == [lost_cancelled]
    assert db.job(lost_once).status == "running"  # the next worker takes it over
    failed = db.job(lost_twice)
    assert failed.status == "failed" and failed.error["code"] == "worker_lost"
    assert failed.finished_at is not None
    assert db.job(lost_cancelled).status == "cancelled"
    assert db.job(live).status == "running" and db.job(queued).status == "queued"
    # A second sweep does not flood the broker with the same requeue ...
    assert reaper.sweep().requeued == [] and dispatcher.submitted == [lost_once]
    # ... but a new attempt that is lost again is requeued again.
    db.update_job(lost_once, attempts=2, heartbeat_at=utcnow() - timedelta(seconds=10))
    assert reaper.sweep().failed == [lost_once]


def test_resend_after_the_window_when_the_requeue_got_lost(db):
    lost = _job(db, attempts=1)
    dispatcher = NoneDispatcher()
    reaper = Reaper(db.factory, dispatcher, STALE_S, 1.0, resend_after_s=0.0)
    reaper.sweep()
    reaper.sweep()
    assert dispatcher.submitted == [lost, lost]


def test_writes_are_fenced_on_the_row_the_reaper_read(db):
    job_id = _job(db, attempts=2)
    with db.factory() as session:
        (seen,) = stale_running_jobs(session, STALE_S)
    # The worker came back and beat just after the reaper read the row.
    db.update_job(job_id, heartbeat_at=utcnow())
    assert not end_stale_job(db.factory, seen, "failed", {"code": "worker_lost", "message": "x"})
    assert db.job(job_id).status == "running"
    with db.factory() as session:
        assert stale_running_jobs(session, STALE_S) == []
