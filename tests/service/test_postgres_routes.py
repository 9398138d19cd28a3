"""The main flows once more on a fresh, real PostgreSQL database (JSON columns, timezone-aware
timestamps, the unique Idempotency-Key constraint, cursor pagination)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from service.app import create_app
from service.auth import create_key
from service.db.migrate import upgrade
from service.db.session import engine_from_settings, make_session_factory, session_scope
from service.settings import Settings
from tests.service.conftest import bearer, tiny_dataset, upload_dataset, upload_model

pytestmark = pytest.mark.services


@pytest.fixture
def pg_settings(new_postgres_url, tmp_path):
    settings = Settings(data_dir=tmp_path, database_url=new_postgres_url, runner="none")
    upgrade(settings)
    return settings


def test_models_datasets_and_jobs_on_postgresql(pg_settings):
    engine = engine_from_settings(pg_settings)
    with session_scope(make_session_factory(engine)) as session:
        headers = bearer(create_key(session, "pg-owner"))
    engine.dispose()
    with TestClient(create_app(pg_settings), raise_server_exceptions=False) as client:
        models = [upload_model(client, headers).json() for _ in range(3)]
        assert all(m["created_at"].endswith("Z") or "+00:00" in m["created_at"] for m in models)
        first_page = client.get("/v1/models?limit=2", headers=headers).json()
        second_page = client.get(
            f"/v1/models?limit=2&after={first_page['data'][-1]['id']}", headers=headers
        ).json()
        listed = [m["id"] for m in first_page["data"] + second_page["data"]]
        assert listed == [m["id"] for m in reversed(models)]
        assert (first_page["has_more"], second_page["has_more"]) == (True, False)

        x, y = tiny_dataset()
        dataset = upload_dataset(client, headers, x, y).json()
        assert dataset["class_counts"] == [10, 10, 10]
        body = {"model_id": models[0]["id"], "train_dataset_id": dataset["id"],
                "edit": {"kind": "remove_samples", "indices": [1, 2]}}
        idem = {**headers, "Idempotency-Key": "pg-1"}
        created = client.post("/v1/jobs", headers=idem, json=body)
        assert created.status_code == 202, created.text
        repeated = client.post("/v1/jobs", headers=idem, json=body)
        assert (repeated.status_code, repeated.json()["id"]) == (200, created.json()["id"])
        job = client.post(f"/v1/jobs/{created.json()['id']}/cancel", headers=headers).json()
        assert job["status"] == "cancelled"
        events = client.get(f"/v1/jobs/{job['id']}/events", headers=headers).json()
        assert [e["seq"] for e in events] == [1]


def test_nul_characters_are_a_client_error_on_postgresql(pg_settings):
    engine = engine_from_settings(pg_settings)
    with session_scope(make_session_factory(engine)) as session:
        headers = bearer(create_key(session, "pg-nul"))
    engine.dispose()
    with TestClient(create_app(pg_settings), raise_server_exceptions=False) as client:
        nul_id = client.get("/v1/models/mdl_%00", headers=headers)
        assert nul_id.status_code == 422, nul_id.text
        body = {"model_id": "mdl_\u0000", "train_dataset_id": "ds_x",
                "edit": {"kind": "remove_class", "class": 0}}
        response = client.post("/v1/jobs", headers=headers, json=body)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")


def test_a_submission_is_committed_when_answered_and_leaves_no_transaction_open(pg_settings):
    """Without a webhook the insert commits by itself (autocommit), with one both inserts
    commit together: either way another connection sees the rows once the answer is sent, and
    none of the app's pooled connections is left inside a transaction."""
    engine = engine_from_settings(pg_settings)
    with session_scope(make_session_factory(engine)) as session:
        headers = bearer(create_key(session, "pg-commit"))
    engine.dispose()
    settings = pg_settings.model_copy(update={"webhook_allow_private": True})
    other = sa.create_engine(pg_settings.database_url, poolclass=sa.NullPool)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        model = upload_model(client, headers).json()
        x, y = tiny_dataset()
        dataset = upload_dataset(client, headers, x, y).json()
        body = {"model_id": model["id"], "train_dataset_id": dataset["id"],
                "edit": {"kind": "remove_class", "class": 1}}
        plain = client.post("/v1/jobs", headers=headers, json=body)
        hooked = client.post("/v1/jobs", headers=headers, json={
            **body, "webhook": {"url": "http://127.0.0.1:9/hook"}})
        assert (plain.status_code, hooked.status_code) == (202, 202), hooked.text
        with other.connect() as connection:
            jobs = connection.exec_driver_sql(
                "SELECT id, status FROM jobs WHERE id IN (%(a)s, %(b)s) ORDER BY created_at",
                {"a": plain.json()["id"], "b": hooked.json()["id"]}).all()
            hooks = connection.exec_driver_sql(
                "SELECT job_id FROM webhook_subscriptions WHERE job_id = %(b)s",
                {"b": hooked.json()["id"]}).all()
            open_transactions = connection.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%%'").scalar()
        assert [tuple(row) for row in jobs] == [(plain.json()["id"], "queued"),
                                                (hooked.json()["id"], "queued")]
        assert [row.job_id for row in hooks] == [hooked.json()["id"]]
        assert open_transactions == 0
    other.dispose()
