"""Issue 11 on the worker side, on a real SQLite database and store: ``outputs.retained_dataset``
stores the train set minus the forgotten points as a new dataset, and a job whose input was
erased after it was queued fails ``input_deleted`` at its claim, having run nothing."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from gif.data import read_dataset
from service.db.models import Dataset, Model, utcnow
from service.erasure import erase
from tests.worker import digits
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
