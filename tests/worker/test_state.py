"""The job-row state machine (service/jobs/state.py) against a real migrated SQLite database:
claims, redelivery, fencing of a run that lost its job, terminal states that never change."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import sqlalchemy as sa

from service.db.models import JobEvent, Model, utcnow
from service.jobs import state
from service.jobs.events import append_event
from tests.worker import digits
from tests.worker.conftest import make_worker_db

REQUEST = digits.quick_request({"kind": "remove_class", "class": 3})


def _claim(db, job_id, worker="w1", *, orphaned=False, stale_after_s=0.6, time_limit_s=3600.0):
    return state.claim_job(
        db.factory,
        job_id,
        worker,
        orphaned=orphaned,
        stale_after_s=stale_after_s,
        time_limit_s=time_limit_s,
    )


def _events(db, job_id):
    with db.factory() as session:
        return session.scalars(
            sa.select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)
        ).all()


def test_claim_moves_queued_to_running_once(seeded):
    db, model, dataset = seeded
    job_id = db.add_job(model.id, dataset.id, REQUEST)

    claim = _claim(db, job_id, "w1")

    job = db.job(job_id)
    assert claim is not None and claim.attempt == 1 and claim.worker_id == "w1"
    assert claim.request["edit"] == {"kind": "remove_class", "class": 3}
    assert job.status == "running" and job.attempts == 1 and job.worker_id == "w1"
    assert job.started_at is not None and job.heartbeat_at is not None


def test_terminal_jobs_are_never_claimed_or_changed(seeded):
    db, model, dataset = seeded
    finished = utcnow() - timedelta(minutes=5)
    for status in ("succeeded", "failed", "cancelled"):
        error = {"code": "non_finite", "message": "x"} if status == "failed" else None
        job_id = db.add_job(
            model.id,
            dataset.id,
            REQUEST,
            status=status,
            attempts=1,
            finished_at=finished,
            error=error,
            cancel_requested=True,
        )
        assert _claim(db, job_id, orphaned=True) is None
        assert not state.fail_unfinished_job(
            job_id, db.settings, code="worker_lost", message="lost"
        )
        job = db.job(job_id)
        assert (job.status, job.attempts, job.error, job.finished_at) == (
            status,
            1,
            error,
            finished,
        )
        assert _events(db, job_id) == []


def test_queued_job_with_cancel_request_is_cancelled_without_running(seeded):
    db, model, dataset = seeded
    job_id = db.add_job(model.id, dataset.id, REQUEST, cancel_requested=True)

    assert _claim(db, job_id) is None

    job = db.job(job_id)
    assert job.status == "cancelled" and job.attempts == 0 and job.finished_at is not None
    assert job.started_at is None


def test_redelivery_leaves_a_job_with_a_live_heartbeat_alone(seeded):
    db, model, dataset = seeded
    job_id = db.add_job(model.id, dataset.id, REQUEST)
    first = _claim(db, job_id, "w1")
    stop = threading.Event()

    def beat():  # the first worker is alive and beating
        while not stop.wait(0.1):
            state.poll_signal(db.factory, first, heartbeat=True)

    thread = threading.Thread(target=beat)
    thread.start()
    try:
        started = time.monotonic()
        assert _claim(db, job_id, "w2", stale_after_s=5.0) is None
        # It saw the heartbeat move (every 0.1 s) and gave up well before the stale window
        # ended; the window is wide so a busy machine cannot make this a race.
        assert time.monotonic() - started < 4.0
    finally:
        stop.set()
        thread.join()
    job = db.job(job_id)
    assert job.status == "running" and job.attempts == 1 and job.worker_id == "w1"


def test_redelivery_reruns_a_job_whose_heartbeat_went_stale(seeded):
    db, model, dataset = seeded
    job_id = db.add_job(model.id, dataset.id, REQUEST)
    _claim(db, job_id, "dead-worker")

    claim = _claim(db, job_id, "w2", stale_after_s=0.3)

    assert claim is not None and claim.attempt == 2 and claim.worker_id == "w2"
    events = _events(db, job_id)
    assert [e.seq for e in events] == [1] and "re-running (attempt 2)" in events[0].message


def test_a_job_lost_twice_fails_worker_lost(seeded):
    db, model, dataset = seeded
    job_id = db.add_job(model.id, dataset.id, REQUEST)
    _claim(db, job_id, "dead-1")
    _claim(db, job_id, "dead-2", orphaned=True)

    assert _claim(db, job_id, "w3", orphaned=True) is None

    job = db.job(job_id)
    assert job.status == "failed" and job.error["code"] == "worker_lost"
    assert job.attempts == state.MAX_ATTEMPTS and job.finished_at is not None


def test_an_orphaned_job_past_its_time_limit_fails_timeout(seeded):
    db, model, dataset = seeded
    job_id = db.add_job(model.id, dataset.id, REQUEST)
    _claim(db, job_id, "dead")
    db.update_job(job_id, started_at=utcnow() - timedelta(hours=2))

    assert _claim(db, job_id, "w2", orphaned=True, time_limit_s=3600.0) is None

    job = db.job(job_id)
    assert job.status == "failed" and job.error["code"] == "timeout"


def test_an_orphaned_job_with_a_cancel_request_ends_cancelled(seeded):
    db, model, dataset = seeded
    job_id = db.add_job(model.id, dataset.id, REQUEST)
    _claim(db, job_id, "dead")
    db.update_job(job_id, cancel_requested=True)

    assert _claim(db, job_id, "w2", orphaned=True) is None
    assert db.job(job_id).status == "cancelled"


def test_a_run_that_lost_its_job_can_no_longer_write(seeded):
    db, model, dataset = seeded
    job_id = db.add_job(model.id, dataset.id, REQUEST)
    old = _claim(db, job_id, "slow")
    new = _claim(db, job_id, "fresh", orphaned=True)

    # The old run's progress, terminal state and result are all refused ...
    assert not state.write_progress(db.factory, old, {"phase": "solve", "iteration": 9})
    assert state.poll_signal(db.factory, old, heartbeat=True).should_stop
    assert not state.finish_job(db.factory, old, "failed", {"code": "x", "message": "y"})
    added = []
    assert not state.commit_success(
        db.factory, old, {"edited_model_id": "mdl_x"}, lambda session: added.append(1)
    )
    assert added == []  # nothing was even attempted inside the refused transaction
    # ... while the new run's go through.
    assert state.write_progress(db.factory, new, {"phase": "solve", "iteration": 1})
    assert not state.poll_signal(db.factory, new, heartbeat=True).should_stop
    job = db.job(job_id)
    assert job.status == "running" and job.progress == {"phase": "solve", "iteration": 1}


def test_a_job_never_gets_two_edited_models(seeded):
    db, model, dataset = seeded
    job_id = db.add_job(model.id, dataset.id, REQUEST)
    claim = _claim(db, job_id)

    def add_edited(session):
        session.add(
            Model(
                owner_id=db.owner_id,
                name="edited",
                arch=model.arch,
                arch_kwargs=model.arch_kwargs,
                input=model.input,
                num_parameters=1,
                size_bytes=1,
                sha256=model.sha256,
                artifact_id=model.artifact_id,
                source_job_id=job_id,
            )
        )

    assert state.commit_success(db.factory, claim, {"edited_model_id": "m1"}, add_edited)
    # A second success (even one that somehow still held the fence) is refused.
    assert not state.commit_success(db.factory, claim, {"edited_model_id": "m2"}, add_edited)
    db.update_job(job_id, status="running")  # force the fence open: the unique key still holds
    assert not state.commit_success(db.factory, claim, {"edited_model_id": "m3"}, add_edited)
    with db.factory() as session:
        count = session.scalar(
            sa.select(sa.func.count()).select_from(Model).where(Model.source_job_id == job_id)
        )
    assert count == 1
    # The refused transaction rolled back its job update too: the first result stands.
    assert db.job(job_id).result == {"edited_model_id": "m1"}


def test_fail_unfinished_job_only_touches_the_named_worker_run(seeded):
    db, model, dataset = seeded
    job_id = db.add_job(model.id, dataset.id, REQUEST)
    _claim(db, job_id, "w1")

    assert not state.fail_unfinished_job(
        job_id, db.settings, code="worker_lost", message="gone", worker_id="someone-else"
    )
    assert db.job(job_id).status == "running"
    assert state.fail_unfinished_job(
        job_id, db.settings, code="worker_lost", message="gone", worker_id="w1"
    )
    job = db.job(job_id)
    assert job.status == "failed" and job.error == {"code": "worker_lost", "message": "gone"}
    assert [e.message for e in _events(db, job_id)] == ["gone"]


def test_event_seq_increases_under_concurrent_writers(seeded):
    db, model, dataset = seeded
    job_id = db.add_job(model.id, dataset.id, REQUEST)
    threads = [
        threading.Thread(
            target=lambda n=n: [
                append_event(db.factory, job_id, "info", "solve", f"t{n}-{i}")
                for i in range(10)
            ]
        )
        for n in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seqs = [e.seq for e in _events(db, job_id)]
    assert seqs == list(range(1, 31))


def test_one_cancel_function_ends_a_queued_job_for_the_api_and_the_claim_path(seeded):
    """``cancel_job`` is the only cancel: the API's route calls it, and so does the claim path
    when it finds a queued job already flagged. Same row values, same single event."""
    db, model, dataset = seeded
    by_api = db.add_job(model.id, dataset.id, REQUEST)
    by_claim = db.add_job(model.id, dataset.id, REQUEST, cancel_requested=True)

    assert state.cancel_job(db.factory, by_api)
    assert not state.cancel_job(db.factory, by_api)  # idempotent: no second transition
    assert _claim(db, by_claim) is None

    for job_id in (by_api, by_claim):
        job = db.job(job_id)
        assert (job.status, job.cancel_requested, job.attempts) == ("cancelled", True, 0)
        assert job.finished_at is not None and job.error is None
        assert [e.message for e in _events(db, job_id)] == ["cancelled before it started"]


def test_cancelling_a_running_job_only_flags_it_and_its_lost_run_ends_cancelled(seeded):
    db, model, dataset = seeded
    job_id = db.add_job(model.id, dataset.id, REQUEST)
    assert _claim(db, job_id) is not None

    assert not state.cancel_job(db.factory, job_id)
    job = db.job(job_id)
    assert (job.status, job.cancel_requested) == ("running", True)
    assert _claim(db, job_id, "w2", orphaned=True) is None  # its worker is gone: end it
    assert db.job(job_id).status == "cancelled"
    assert [e.level for e in _events(db, job_id)] == ["info"]



def test_a_refused_success_writes_no_event_and_a_success_writes_its_own(seeded):
    """``commit_success``'s event is in the success's transaction: seen with the status."""
    db, model, dataset = seeded
    job_id = db.add_job(model.id, dataset.id, REQUEST)
    claim = _claim(db, job_id)
    event = ("info", "save", "succeeded", {"edited_model_id": "m1"})
    before = [e.message for e in _events(db, job_id)]
    stale = state.Claim(**{**claim.__dict__, "attempt": claim.attempt + 1})
    assert not state.commit_success(db.factory, stale, {"edited_model_id": "m0"},
                                    lambda session: None, event)
    assert [e.message for e in _events(db, job_id)] == before
    assert state.commit_success(db.factory, claim, {"edited_model_id": "m1"},
                                lambda session: None, event)
    assert [e.message for e in _events(db, job_id)] == [*before, "succeeded"]


def test_a_success_whose_event_seq_was_taken_is_committed_again(tmp_path, new_postgres_url,
                                                                trained_state, digits_data):
    """On PostgreSQL another writer can take the seq the success's event read (SQLite has one
    writer at a time): the success is committed again with the next seq, not mistaken for a
    second edited model. The racing write is a real commit on another connection, made at
    the success's flush of its event."""
    db, engine = make_worker_db(tmp_path / "data", database_url=new_postgres_url)
    try:
        x, y = digits_data
        model, dataset = db.add_model(trained_state), db.add_dataset(x, y)
        job_id = db.add_job(model.id, dataset.id, REQUEST)
        claim = _claim(db, job_id)
        raced = []

        def race(session, _context, _instances):
            if not raced and any(isinstance(row, JobEvent) for row in session.new):
                raced.append(True)  # first: the racing writer's own flush comes here too
                append_event(db.factory, job_id, "info", None, "a racing event")

        sa.event.listen(db.factory, "before_flush", race)
        event = ("info", "save", "succeeded", {"edited_model_id": "m1"})
        assert state.commit_success(db.factory, claim, {"edited_model_id": "m1"},
                                    lambda session: None, event)
        sa.event.remove(db.factory, "before_flush", race)
        messages = [e.message for e in _events(db, job_id)]
        assert raced and messages[-2:] == ["a racing event", "succeeded"]
        assert db.job(job_id).status == "succeeded"
    finally:
        engine.dispose()
