"""A job the API saved but never sent (it died between committing the row and publishing the
message) is sent by the live API's reaper once it is older than ``GIF_REQUEUE_UNSENT_AFTER_S``,
and a real Celery worker runs it to success. The row is written by the API's own
``create_job_row`` straight into the server's PostgreSQL database — exactly what a crashed
``POST /v1/jobs`` leaves — for a model and dataset uploaded through the API."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import sqlalchemy as sa

from service.catalog import BuiltinCatalog
from service.db.models import Job, Model, utcnow
from service.db.session import make_engine, make_session_factory
from service.jobs.submit import create_job_row
from service.schemas import JobCreate
from tests.reliability.helpers import upload_dataset, upload_model, wait_job
from tests.worker import digits

GRACE_S = 30.0  # the server runs with the default GIF_REQUEUE_UNSENT_AFTER_S


def _reaper_sent(server_log: str, job_id: str) -> bool:
    for line in server_log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        message = str(record.get("message", "")) if isinstance(record, dict) else ""
        if job_id in message and "never sent" in message:
            return True
    return False


def test_a_job_saved_but_never_sent_is_sent_by_the_reaper_and_succeeds(
    distributed, module_worker, upload_files
):
    client = distributed.client()
    model = upload_model(client, upload_files.model)
    dataset = upload_dataset(client, upload_files.data)
    engine = make_engine(distributed.env["GIF_DATABASE_URL"])
    factory = make_session_factory(engine)
    try:
        with factory() as session:
            owner_id = session.scalar(sa.select(Model.owner_id).where(Model.id == model["id"]))
        body = JobCreate.model_validate(
            {
                "model_id": model["id"],
                "train_dataset_id": dataset["id"],
                **digits.quick_request({"kind": "remove_class", "class": 3}),
            }
        )
        job, created = create_job_row(factory, BuiltinCatalog(), owner_id, body, None)
        assert created and job.status == "queued"

        # Young, it may still be in its API's hands: three reaper sweeps (one a second) leave it.
        time.sleep(3.0)
        with factory() as session:
            row = session.get(Job, job.id)
            assert (row.status, row.enqueued_at, row.attempts) == ("queued", None, 0)
            # Its API died: the row is now past the grace period, still unsent.
            row.created_at = utcnow() - timedelta(seconds=GRACE_S + 5.0)
            session.commit()

        done = wait_job(distributed, client, job.id, timeout=120.0)
        assert done["status"] == "succeeded", (done["error"], module_worker.log_tail())
        assert done["edited_model_id"]
        with factory() as session:
            row = session.get(Job, job.id)
            assert row.enqueued_at is not None and row.attempts == 1
        assert _reaper_sent(distributed.logs(), job.id), distributed.log_tail()
    finally:
        engine.dispose()
