"""The dispatcher seam: runner selection, readiness through the real broker client, and a
broker that refuses a job → 503 with nothing left queued."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.dispatch import Dispatcher, NoneDispatcher, make_dispatcher
from service.settings import Settings
from tests.service.conftest import assert_problem

DEAD_BROKER = "redis://127.0.0.1:1/0"  # port 1 refuses connections


def test_runner_none_makes_the_none_dispatcher(tmp_path):
    dispatcher = make_dispatcher(Settings(data_dir=tmp_path, runner="none"))
    assert isinstance(dispatcher, NoneDispatcher) and isinstance(dispatcher, Dispatcher)
    dispatcher.submit("job_x")
    assert dispatcher.submitted == ["job_x"] and dispatcher.ready()


def test_readyz_is_503_when_the_broker_is_down(settings):
    from service.runners.celery import CeleryDispatcher

    distributed = settings.model_copy(update={"broker_url": DEAD_BROKER, "runner": "celery"})
    dispatcher = CeleryDispatcher(distributed)
    with TestClient(create_app(distributed, dispatcher=dispatcher),
                    raise_server_exceptions=False) as client:
        body = assert_problem(client.get("/readyz"), 503)
        assert "celery" in body["detail"]


@pytest.mark.services
def test_readyz_is_ready_with_a_live_broker(settings, redis_url):
    from service.runners.celery import CeleryDispatcher

    distributed = settings.model_copy(update={"broker_url": redis_url, "runner": "celery"})
    with TestClient(create_app(distributed, dispatcher=CeleryDispatcher(distributed))) as client:
        assert client.get("/readyz").json()["runner"] == "celery"


def test_a_refused_submission_is_503_and_leaves_no_job(settings, uploaded, alice):
    from service.runners.celery import CeleryDispatcher

    distributed = settings.model_copy(update={"broker_url": DEAD_BROKER, "runner": "celery"})
    body = {"model_id": uploaded.model_id, "train_dataset_id": uploaded.dataset_id,
            "edit": {"kind": "remove_class", "class": 0}}
    with TestClient(create_app(distributed, dispatcher=CeleryDispatcher(distributed)),
                    raise_server_exceptions=False) as client:
        started = time.monotonic()
        assert_problem(client.post("/v1/jobs", headers=alice, json=body), 503)
        assert time.monotonic() - started < 30
        assert client.get("/v1/jobs", headers=alice).json()["data"] == []
