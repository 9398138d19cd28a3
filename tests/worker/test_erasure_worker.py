"""Issue 11 on the worker side, on a real SQLite database and store: ``outputs.retained_dataset``
stores the train set minus the forgotten points as a new dataset, and a job whose input was
erased after it was queued fails ``input_deleted`` at its claim, having run nothing."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import sqlalchemy as sa

from gif.data import read_dataset
from service.db.models import Dataset, Model, utcnow
from service.erasure import erase, erase_in_session
from service.jobs import state
from service.problems import ProblemError
from tests.worker import digits
from tests.worker.conftest import make_worker_db
from worker import jobs


def test_retained_dataset_is_the_train_set_without_the_forgotten_points(seeded, digits_data):
    db, source, dataset = seeded
    forgotten = [0, 5, 17, 300, 899]
    request = digits.quick_request({"kind": "remove_samples", "indices": forgotten},
                                   outputs={"retained_dataset": True})
    job_id = db.add_job(source.id, dataset.id, request)

    assert jobs.execute_job(job_id, db.settings) == "succeeded"

    job = db.job(job_id)
    retained_id = job.result["retained_dataset_id"]
    with db.factory() as session:
        row = session.get(Dataset, retained_id)
    x, y = digits_data
    keep = np.setdiff1d(np.arange(len(y)), forgotten)
    assert row.source_job_id == job_id and row.owner_id == db.owner_id
    assert row.num_samples == len(keep) and row.sample_shape == [64]
    assert row.class_counts == np.bincount(y[keep], minlength=10).tolist()
    assert db.store.verify(row.sha256) == row.size_bytes
    stored = read_dataset(db.store.path(row.sha256))
    np.testing.assert_array_equal(stored.x.numpy(), x[keep])
    np.testing.assert_array_equal(stored.y.numpy(), y[keep])
    # The original can now be erased; the retained copy and the edited model stay.
    erase(db.factory, db.store, "dataset", db.owner_id, dataset.id)
    assert not db.store.exists(dataset.sha256) and db.store.exists(row.sha256)


def test_retained_dataset_of_a_class_removal_drops_the_whole_class(seeded, digits_data):
    db, source, dataset = seeded
    request = digits.quick_request({"kind": "remove_class", "class": 3},
                                   outputs={"retained_dataset": True})
    job_id = db.add_job(source.id, dataset.id, request)
    assert jobs.execute_job(job_id, db.settings) == "succeeded"
    with db.factory() as session:
        row = session.get(Dataset, db.job(job_id).result["retained_dataset_id"])
    _, y = digits_data
    assert row.num_samples == int((y != 3).sum()) and row.class_counts[3] == 0


@pytest.mark.parametrize("erased", ["model", "train", "eval"])
def test_a_job_whose_input_was_erased_after_queueing_fails_input_deleted(seeded, digits_data,
                                                                          erased):
    """The window of the race: the deletion committed after the submission's check. The
    claim sees it and fails the job; nothing is loaded, no model is produced."""
    db, source, dataset = seeded
    x, y = digits_data
    evaluation = db.add_dataset(x[:100], y[:100], name="eval")
    request = digits.quick_request({"kind": "remove_class", "class": 3},
                                   eval={"datasets": {"test": evaluation.id}})
    job_id = db.add_job(source.id, dataset.id, request)
    target = {"model": ("model", source.id), "train": ("dataset", dataset.id),
              "eval": ("dataset", evaluation.id)}[erased]
    # As a DELETE that ran in the window: the row marked, the file gone, no active-job check.
    with db.factory() as session:
        entity = Model if target[0] == "model" else Dataset
        session.execute(sa.update(entity).where(entity.id == target[1])
                        .values(deleted_at=utcnow()))
        session.commit()

    assert jobs.execute_job(job_id, db.settings) == "failed"

    job = db.job(job_id)
    assert job.error["code"] == "input_deleted" and target[1] in job.error["message"]
    assert job.attempts == 1 and job.result is None
    with db.factory() as session:
        assert session.scalars(sa.select(Model).where(Model.source_job_id == job_id)).all() == []


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request, tmp_path, trained_state, digits_data):
    """``seeded`` on SQLite and on a fresh PostgreSQL database."""
    overrides = {}
    if request.param == "postgresql":
        overrides["database_url"] = request.getfixturevalue("new_postgres_url")
    db, engine = make_worker_db(tmp_path / "data", **overrides)
    x, y = digits_data
    try:
        yield db, db.add_model(trained_state), db.add_dataset(x, y)
    finally:
        engine.dispose()


def _claim(db, job_id):
    return state.claim_job(db.factory, job_id, "test-worker", orphaned=False,
                           stale_after_s=30, time_limit_s=3600)


def test_a_claim_racing_a_deletion_in_flight_waits_for_it_and_fails_the_job(any_db):
    """The deletion holds its row lock (PostgreSQL) or the write lock (SQLite) from its first
    statement to its commit; a claim that comes in between waits, then sees the object
    deleted: the job fails input_deleted and is never handed to the edit."""
    db, source, dataset = any_db
    job_id = db.add_job(source.id, dataset.id, digits.quick_request({"kind": "remove_class",
                                                                      "class": 3}))
    # Queued after the deletion's check for active jobs, as in the race: hide it from the
    # check by making it look cancelled, then re-queue it once the deletion is under way.
    db.update_job(job_id, status="cancelled")
    holding, release = threading.Event(), threading.Event()

    def delete() -> None:
        with db.factory() as session:
            erase_in_session(session, "model", db.owner_id, source.id, reason="request",
                             api_key_id=None)
            holding.set()
            release.wait(30)
            session.commit()

    deleter = threading.Thread(target=delete)
    deleter.start()
    assert holding.wait(30)
    db_requeue = threading.Thread(target=lambda: db.update_job(job_id, status="queued"))
    if db.settings.database_url.startswith("sqlite"):
        # SQLite has one writer: the re-queue itself waits for the deletion to commit, so the
        # job is queued after it, and the claim that follows must see the deletion.
        db_requeue.start()
        time.sleep(0.3)
        release.set()
        db_requeue.join(30)
        claimed = _claim(db, job_id)
    else:
        db_requeue.start()
        db_requeue.join(30)  # PostgreSQL: the job row is not locked by the deletion
        result: dict = {}
        claimer = threading.Thread(target=lambda: result.update(claim=_claim(db, job_id)))
        claimer.start()
        time.sleep(0.5)
        assert claimer.is_alive(), "the claim did not wait for the deletion's row lock"
        release.set()
        claimer.join(30)
        claimed = result["claim"]
    deleter.join(30)

    assert claimed is None
    job = db.job(job_id)
    assert job.status == "failed" and job.error["code"] == "input_deleted"


def test_a_running_job_blocks_the_deletion_of_its_inputs(any_db):
    db, source, dataset = any_db
    job_id = db.add_job(source.id, dataset.id, digits.quick_request({"kind": "remove_class",
                                                                      "class": 3}))
    assert _claim(db, job_id) is not None  # running now
    for kind, object_id in (("model", source.id), ("dataset", dataset.id)):
        with pytest.raises(ProblemError) as err:
            erase(db.factory, db.store, kind, db.owner_id, object_id)
        assert err.value.status == 409 and job_id in err.value.detail
    assert db.store.exists(source.sha256) and db.store.exists(dataset.sha256)
