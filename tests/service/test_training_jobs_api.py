"""``POST /v1/jobs`` with an E10 training method (runner ``none``: jobs stay queued): the body is
``EditRequest``'s, so the method, its recipe and its validation come with it."""

from __future__ import annotations

import pytest

from tests.service.conftest import assert_problem
from tests.service.test_jobs_api import job_body


def test_a_salun_job_is_accepted_with_its_recipe_filled_in(client, alice, uploaded, app):
    body = job_body(uploaded, method="salun", training={"epochs": 2, "mask_ratio": 0.3})
    response = client.post("/v1/jobs", headers=alice, json=body)
    assert response.status_code == 202, response.text
    job = response.json()
    training = job["request"]["training"]
    assert job["request"]["method"] == "salun"
    assert (training["epochs"], training["mask_ratio"]) == (2, 0.3)
    assert (training["optimizer"], training["lr"], training["batch_size"]) == ("sgd", 0.013, 256)
    assert app.state.dispatcher.submitted == [job["id"]]
    # The default request keeps no training block.
    plain = client.post("/v1/jobs", headers=alice, json=job_body(uploaded)).json()
    assert plain["request"]["training"] is None


@pytest.mark.parametrize(
    ("overrides", "loc"),
    [
        ({"method": "salun", "edit": {"kind": "relabel", "indices": [0], "labels": [2]}},
         ["body", "method"]),
        ({"method": "retrain"}, ["body", "training"]),
        ({"method": "retrain", "training": {"optimizer": "sgd", "epochs": 3, "batch_size": 8}},
         ["body", "training", "lr"]),
        ({"method": "salun", "training": {"mask_ratio": 1.5}}, ["body", "training", "mask_ratio"]),
        ({"method": "gif", "training": {"epochs": 1}}, ["body", "training"]),
    ],
)
def test_a_training_job_that_cannot_run_is_422_naming_the_field(client, alice, uploaded, app,
                                                                 overrides, loc):
    response = client.post("/v1/jobs", headers=alice, json=job_body(uploaded, **overrides))
    assert_problem(response, 422, loc=loc)
    assert app.state.dispatcher.submitted == []
