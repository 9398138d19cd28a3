"""An E10 training method through ``execute_job`` on a real SQLite database and artifact store:
the job runs to ``succeeded`` with an edited model, GIF's metrics rows and the train phase."""

from __future__ import annotations

import sqlalchemy as sa
import torch
from safetensors.torch import load_file

from service.db.models import JobEvent, Metric, Model
from tests.worker import digits
from worker import jobs


def test_a_salun_job_runs_to_succeeded_with_an_edited_model(seeded, trained_state, digits_data):
    db, source, dataset = seeded
    request = {"edit": {"kind": "remove_class", "class": 3}, "method": "salun",
               "training": {"epochs": 3}}
    job_id = db.add_job(source.id, dataset.id, request)

    assert jobs.execute_job(job_id, db.settings) == "succeeded"

    job = db.job(job_id)
    assert job.error is None and job.result["method"] == "salun"
    assert not {"solver", "selection", "scale"} & set(job.result)
    assert job.result["training"]["epochs_done"] == 3
    with db.factory() as session:
        edited = session.scalars(sa.select(Model).where(Model.source_job_id == job_id)).one()
        rows = session.scalars(sa.select(Metric).where(Metric.job_id == job_id)).all()
        phases = {e.phase for e in session.scalars(
            sa.select(JobEvent).where(JobEvent.job_id == job_id))}
    weights = load_file(db.store.path(edited.sha256))
    assert weights.keys() == trained_state.keys()
    assert any(not torch.equal(weights[k], trained_state[k]) for k in weights)
    x, y = digits_data
    assert digits.accuracy(trained_state, x[y == 3], y[y == 3]) > 0.9
    assert digits.accuracy(weights, x[y == 3], y[y == 3]) < 0.1
    assert job.result["metrics"]["after"]["forget"]["accuracy"] < 0.1
    assert {("after", "forget"), ("before", "retain")} <= {(m.stage, m.dataset) for m in rows}
    assert {"load", "select", "train", "evaluate"} <= phases
