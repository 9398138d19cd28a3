"""``execute_job`` end to end on a real SQLite database and artifact store: a real edit of a
tiny trained network, the rows it writes, idempotency, cancel, and the failure codes."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from billiard.exceptions import SoftTimeLimitExceeded
from safetensors.torch import load_file

from gif.errors import InvalidCheckpoint, NonFinite
from service.db.models import Artifact, JobEvent, Metric, Model
from tests.worker import digits
from worker import jobs

REMOVE_3 = {"kind": "remove_class", "class": 3}


def _models_of_job(db, job_id):
    with db.factory() as session:
        return session.scalars(sa.select(Model).where(Model.source_job_id == job_id)).all()


def _events(db, job_id):
    with db.factory() as session:
        return session.scalars(
            sa.select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)
        ).all()


def test_a_queued_job_runs_to_succeeded_with_an_edited_model(seeded, trained_state, digits_data):
    db, source, dataset = seeded
    job_id = db.add_job(source.id, dataset.id, digits.quick_request(REMOVE_3))

    assert jobs.execute_job(job_id, db.settings) == "succeeded"

    job = db.job(job_id)
    [edited] = _models_of_job(db, job_id)
    assert job.edited_model_id == edited.id == job.result["edited_model_id"]
    assert job.attempts == 1 and job.error is None and job.finished_at >= job.started_at
    assert (edited.arch, edited.arch_kwargs, edited.input) == (
        source.arch,
        source.arch_kwargs,
        source.input,
    )
    assert edited.name.startswith("digits-mlp") and "remove_class class 3" in edited.name
    # The stored file is the edited checkpoint: its hash, strict keys, changed weights.
    assert db.store.verify(edited.sha256) == edited.size_bytes
    with db.factory() as session:
        assert session.get(Artifact, edited.artifact_id).sha256 == edited.sha256
    weights = load_file(db.store.path(edited.sha256))
    assert set(weights) == set(trained_state)
    changed = [k for k in weights if not torch.equal(weights[k], trained_state[k])]
    assert changed, "the edit changed no weight"
    # The edit forgot class 3 on the training points of class 3 (its forget set).
    x, y = digits_data
    assert digits.accuracy(trained_state, x[y == 3], y[y == 3]) > 0.9
    assert job.result["metrics"]["after"]["forget"]["accuracy"] < 0.5
    # The source model is untouched.
    assert db.store.verify(source.sha256) == source.size_bytes
    assert all(
        torch.equal(v, trained_state[k]) for k, v in load_file(db.store.path(source.sha256)).items()
    )
    # Metrics rows mirror result.metrics: one per stage and set, before = source, after = edit.
    with db.factory() as session:
        rows = session.scalars(sa.select(Metric).where(Metric.job_id == job_id)).all()
    by_key = {(m.stage, m.dataset): m for m in rows}
    for stage, model_id in (("before", source.id), ("after", edited.id)):
        for name, values in job.result["metrics"][stage].items():
            if isinstance(values, dict):
                assert by_key[(stage, name)].values == values
                assert by_key[(stage, name)].model_id == model_id
    assert ("after", "forget") in by_key and ("before", "retain") in by_key
    # Events: ordered, from claim to success, with the engine's phases in between.
    events = _events(db, job_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].message.startswith("started on") and events[-1].message == "succeeded"
    assert {"select", "solve", "evaluate"} <= {e.phase for e in events}
    assert job.progress is not None and job.progress["phase"] in ("save", "evaluate")


def test_a_second_delivery_of_a_finished_job_changes_nothing(seeded):
    db, source, dataset = seeded
    job_id = db.add_job(source.id, dataset.id, digits.quick_request(REMOVE_3))
    assert jobs.execute_job(job_id, db.settings) == "succeeded"
    before = db.job(job_id)
    events_before = len(_events(db, job_id))

    assert jobs.execute_job(job_id, db.settings) == "succeeded"
    assert jobs.execute_job(job_id, db.settings, orphaned=True) == "succeeded"

    after = db.job(job_id)
    assert len(_models_of_job(db, job_id)) == 1
    assert (after.attempts, after.finished_at, after.result) == (
        before.attempts,
        before.finished_at,
        before.result,
    )
    assert len(_events(db, job_id)) == events_before


def test_an_unknown_job_id_is_a_no_op(worker_db):
    assert jobs.execute_job("job_doesnotexist", worker_db.settings) is None


def test_cancel_stops_a_running_job_without_a_model(seeded):
    db, source, dataset = seeded
    job_id = db.add_job(source.id, dataset.id, digits.long_request(REMOVE_3))
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.setdefault("status", jobs.execute_job(job_id, db.settings))
    )
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = db.job(job_id)
        if job.status == "running" and (job.progress or {}).get("phase") == "solve":
            break
        time.sleep(0.1)
    assert (job.progress or {}).get("phase") == "solve", "the job never reached the solver"
    db.update_job(job_id, cancel_requested=True)
    cancelled_at = time.monotonic()
    thread.join(timeout=60)

    assert not thread.is_alive()
    assert time.monotonic() - cancelled_at < 10  # stopped at a next iteration, not at max_iter
    assert outcome["status"] == "cancelled"
    job = db.job(job_id)
    assert job.status == "cancelled" and job.result is None and job.edited_model_id is None
    assert _models_of_job(db, job_id) == []


def test_a_corrupt_model_artifact_fails_invalid_checkpoint(seeded):
    db, source, dataset = seeded
    path = db.store.path(source.sha256)
    path.write_bytes(path.read_bytes()[:-16] + b"\x00" * 16)  # bit rot in the stored file
    job_id = db.add_job(source.id, dataset.id, digits.quick_request(REMOVE_3))

    assert jobs.execute_job(job_id, db.settings) == "failed"

    error = db.job(job_id).error
    assert error["code"] == "invalid_checkpoint" and "corrupt" in error["message"]
    assert _models_of_job(db, job_id) == []


def test_a_corrupt_dataset_artifact_fails_invalid_dataset(seeded):
    db, source, dataset = seeded
    db.store.path(dataset.sha256).write_bytes(b"not a zip file at all")
    job_id = db.add_job(source.id, dataset.id, digits.quick_request(REMOVE_3))

    assert jobs.execute_job(job_id, db.settings) == "failed"

    error = db.job(job_id).error
    assert error["code"] == "invalid_dataset" and dataset.id in error["message"]


def test_a_request_the_data_cannot_satisfy_fails_with_the_engine_code(seeded):
    db, source, dataset = seeded
    job_id = db.add_job(
        source.id, dataset.id, digits.quick_request({"kind": "remove_class", "class": 12})
    )
    assert jobs.execute_job(job_id, db.settings) == "failed"
    assert db.job(job_id).error["code"] == "invalid_request"


def test_weights_that_overflow_fail_non_finite_and_leave_the_source_unchanged(
    worker_db, trained_state, digits_data
):
    db = worker_db
    x, y = digits_data
    huge = {k: v * 1e20 for k, v in trained_state.items()}  # finite, but logits overflow
    source = db.add_model(huge)
    dataset = db.add_dataset(x, y)
    job_id = db.add_job(source.id, dataset.id, digits.quick_request(REMOVE_3))

    assert jobs.execute_job(job_id, db.settings) == "failed"

    job = db.job(job_id)
    assert job.error["code"] == "non_finite" and "non-finite" in job.error["message"]
    assert job.result is None and _models_of_job(db, job_id) == []
    assert db.store.verify(source.sha256) == source.size_bytes


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (InvalidCheckpoint("bad file"), "failed", "invalid_checkpoint"),
        (NonFinite("nan in the rhs"), "failed", "non_finite"),
        (torch.OutOfMemoryError("CUDA out of memory"), "failed", "out_of_memory"),
        (MemoryError(), "failed", "out_of_memory"),
        (SoftTimeLimitExceeded(), "failed", "timeout"),
        (ZeroDivisionError("division by zero"), "failed", "internal_error"),
    ],
)
def test_job_outcome_maps_each_failure_to_its_code(exc, status, code):
    outcome_status, error = jobs.job_outcome(
        exc, time_limit_s=60.0, timeout_errors=(SoftTimeLimitExceeded,)
    )
    assert outcome_status == status and error["code"] == code
    assert error["message"] and "Traceback" not in error["message"]


def test_cancelled_maps_to_cancelled_without_error():
    from gif.errors import Cancelled

    assert jobs.job_outcome(Cancelled("stop"), time_limit_s=1.0, timeout_errors=()) == (
        "cancelled",
        None,
    )


def test_json_safe_makes_strict_json():
    value = {"a": float("nan"), "b": [np.float32(1.5), torch.tensor(2.0)], "c": (1, float("inf"))}
    assert jobs.json_safe(value) == {"a": None, "b": [1.5, 2.0], "c": [1, None]}


def test_metric_rows_split_sets_and_scalars():
    metrics = {
        "before": {"forget": {"accuracy": 1.0}, "score": 0.1},
        "after": {"forget": {"accuracy": 0.0}, "test": {"accuracy": 0.9}, "score": 0.8},
    }
    rows = jobs.metric_rows("job_x", metrics, {"before": "mdl_a", "after": "mdl_b"})
    summary = {(r.stage, r.dataset): (r.model_id, r.values) for r in rows}
    assert summary == {
        ("before", "forget"): ("mdl_a", {"accuracy": 1.0}),
        ("before", "_summary"): ("mdl_a", {"score": 0.1}),
        ("after", "forget"): ("mdl_b", {"accuracy": 0.0}),
        ("after", "test"): ("mdl_b", {"accuracy": 0.9}),
        ("after", "_summary"): ("mdl_b", {"score": 0.8}),
    }


def test_terminal_writes_survive_a_database_that_is_briefly_unavailable(tmp_path):
    missing = sa.create_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'gif.db'}")
    calls = []

    def write_once_the_database_is_back(value):
        calls.append(value)
        if len(calls) == 1:  # a real OperationalError: the database cannot be opened
            with missing.connect():
                pass
        return value

    assert jobs.with_db_retry(write_once_the_database_is_back, "stored") == "stored"
    assert calls == ["stored", "stored"]
    with pytest.raises(sa.exc.OperationalError):
        jobs.with_db_retry(lambda: missing.connect(), attempts=2)


def test_a_sample_removal_job_loads_its_holdout_set(seeded):
    """``step.holdout_dataset_id`` (method.md E9) is loaded like an evaluation set and tunes the
    sample removal: the result has no ``no_holdout`` warning and the path scored loss KS; the
    holdout is never reported as an evaluation set."""
    db, source, dataset = seeded
    x, y = digits.digits_arrays(num_samples=1797, seed=0)
    holdout = db.add_dataset(x[900:], y[900:], name="digits-holdout")  # not in the 900 trained
    edit = {"kind": "remove_samples", "indices": list(range(0, 300, 3))}
    with_holdout = db.add_job(source.id, dataset.id, digits.quick_request(
        edit, step={"holdout_dataset_id": holdout.id}))
    without = db.add_job(source.id, dataset.id, digits.quick_request(edit))
    assert jobs.execute_job(with_holdout, db.settings) == "succeeded"
    assert jobs.execute_job(without, db.settings) == "succeeded"
    tuned, fallback = db.job(with_holdout).result, db.job(without).result
    assert [w["code"] for w in tuned["warnings"]].count("no_holdout") == 0
    assert "no_holdout" in [w["code"] for w in fallback["warnings"]]
    assert "loss_ks" in tuned["path"]["chosen"]
    assert set(tuned["metrics"]["after"]) == set(fallback["metrics"]["after"])
