"""The reaper's decisions on a real (SQLite) database, without processes: which ``running``
jobs count as lost, what happens to each (requeue, ``worker_lost``, ``cancelled``), that a
requeue is sent once per attempt, and that its writes are fenced on the row it read; and which
``queued`` jobs count as never sent (sent once, fenced, retried after a failed send). The live
versions are in test_worker_loss.py (a killed Celery worker) and test_unsent_jobs.py."""

from __future__ import annotations

from datetime import timedelta

import pytest

from service.db.models import utcnow
from service.dispatch import NoneDispatcher
from service.jobs.reaper import (
    Reaper,
    end_stale_job,
    send_unsent_job,
    stale_running_jobs,
    unsent_queued_jobs,
)
from service.jobs.state import mark_enqueued
from tests.worker import digits
from tests.worker.conftest import make_worker_db

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


UNSENT_AFTER_S = 30.0


def _queued(db, *, age_s: float, enqueued: bool = False, cancel: bool = False) -> str:
    created = utcnow() - timedelta(seconds=age_s)
    return db.add_job(
        *db.ids,
        db.request,
        status="queued",
        created_at=created,
        enqueued_at=created if enqueued else None,
        cancel_requested=cancel,
    )


class FlakyDispatcher(NoneDispatcher):
    """A runner whose broker refuses the first ``failures`` sends."""

    def __init__(self, failures: int):
        super().__init__()
        self.failures = failures

    def submit(self, job_id: str) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("broker unreachable")
        super().submit(job_id)


def test_a_queued_job_never_sent_is_sent_once_and_marked(db):
    unsent = _queued(db, age_s=60.0)
    young = _queued(db, age_s=1.0)  # its API may still be sending it
    sent = _queued(db, age_s=60.0, enqueued=True)
    cancel_asked = _queued(db, age_s=60.0, cancel=True)
    dispatcher = NoneDispatcher()
    reaper = Reaper(
        db.factory, dispatcher, STALE_S, 1.0, requeue_unsent_after_s=UNSENT_AFTER_S
    )

    report = reaper.sweep()

    assert report.sent_unsent == [unsent] and dispatcher.submitted == [unsent]
    assert report.requeued == [] and report.failed == [] and report.cancelled == []
    marked = db.job(unsent)
    assert marked.status == "queued" and marked.enqueued_at is not None
    assert marked.enqueued_at > marked.created_at + timedelta(seconds=UNSENT_AFTER_S)
    for job_id in (young, cancel_asked):
        assert db.job(job_id).enqueued_at is None
    assert db.job(sent).enqueued_at == db.job(sent).created_at  # untouched
    # Neither this reaper nor another API replica's sends it again.
    other = Reaper(db.factory, dispatcher, STALE_S, 1.0, requeue_unsent_after_s=UNSENT_AFTER_S)
    assert reaper.sweep().sent_unsent == [] and other.sweep().sent_unsent == []
    assert dispatcher.submitted == [unsent]
    # The young one is sent once it is past the grace period.
    db.update_job(young, created_at=utcnow() - timedelta(seconds=UNSENT_AFTER_S + 1))
    assert reaper.sweep().sent_unsent == [young] and dispatcher.submitted == [unsent, young]


def test_a_failed_send_leaves_the_job_unmarked_for_the_next_sweep(db):
    unsent = _queued(db, age_s=60.0)
    dispatcher = FlakyDispatcher(failures=1)
    with pytest.raises(ConnectionError):
        send_unsent_job(db.factory, dispatcher, unsent)
    assert db.job(unsent).enqueued_at is None and dispatcher.submitted == []
    reaper = Reaper(db.factory, dispatcher, STALE_S, 1.0, requeue_unsent_after_s=UNSENT_AFTER_S)
    assert reaper.sweep().sent_unsent == [unsent] and dispatcher.submitted == [unsent]
    assert db.job(unsent).enqueued_at is not None


def test_sending_an_unsent_job_is_fenced_on_the_row(db):
    late_mark, cancelled, started = (_queued(db, age_s=60.0) for _ in range(3))
    with db.factory() as session:
        assert unsent_queued_jobs(session, UNSENT_AFTER_S) == [late_mark, cancelled, started]
    # Between the reaper's read and its send: the API marks its own send late, a user
    # cancels, a worker claims (a duplicate message from an unmarked send).
    assert mark_enqueued(db.factory, late_mark)
    assert not mark_enqueued(db.factory, late_mark)  # marked once
    db.update_job(cancelled, status="cancelled", cancel_requested=True)
    db.update_job(started, status="running", attempts=1, heartbeat_at=utcnow())
    dispatcher = NoneDispatcher()
    for job_id in (late_mark, cancelled, started):
        assert not send_unsent_job(db.factory, dispatcher, job_id)
    assert dispatcher.submitted == []
    assert db.job(cancelled).enqueued_at is None and db.job(started).enqueued_at is None
