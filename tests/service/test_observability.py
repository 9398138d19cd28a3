"""Observability: JSON log lines (with request/job ids, never secrets) and Prometheus metrics
whose counters move with requests and whose job series reflect a real (migrated) database."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.db.migrate import upgrade_engine
from service.db.models import Artifact, Job, Model, Owner
from service.db.session import make_engine, make_session_factory
from service.observability import (
    JOB_DURATION_BUCKETS,
    JsonFormatter,
    install_observability,
    job_context,
    redact,
)

SECRET_KEY = "gif_Zx9Q2mK7vLr4TtY8pW3nB6cD1eF5gH0jKqRsUvWx"


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest.fixture
def log_stream():
    """Capture every record of the root logger as JSON lines, as configure_logging does."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(old_level)


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


# --- logs -----------------------------------------------------------------------------------


def test_log_line_is_json_with_job_id_and_extras(log_stream):
    with job_context("job_0123456789abcdef01234567"):
        logging.getLogger("worker.jobs").warning("solve took %d iterations", 37,
                                                 extra={"phase": "solve"})
    logging.getLogger("worker.jobs").info("outside")
    first, second = _lines(log_stream)
    assert first["level"] == "WARNING"
    assert first["logger"] == "worker.jobs"
    assert first["message"] == "solve took 37 iterations"
    assert first["job_id"] == "job_0123456789abcdef01234567"
    assert first["phase"] == "solve"
    parsed = dt.datetime.fromisoformat(first["time"])
    assert parsed.utcoffset() == dt.timedelta(0)
    assert "job_id" not in second  # the context ended with the block


def test_secrets_are_redacted_everywhere(log_stream):
    logger = logging.getLogger("service.test")
    logger.info("headers: Authorization: Bearer %s", SECRET_KEY)
    logger.info("key %s created", SECRET_KEY, extra={"authorization": f"Bearer {SECRET_KEY}",
                                                     "detail": {"note": f"used {SECRET_KEY}"}})
    try:
        raise ValueError(f"bad key {SECRET_KEY}")
    except ValueError:
        logger.exception("failed")
    text = log_stream.getvalue()
    assert SECRET_KEY not in text
    assert SECRET_KEY[4:] not in text  # not even the token part
    lines = _lines(log_stream)
    assert lines[0]["message"] == "headers: Authorization: Bearer [REDACTED]"
    assert lines[1]["authorization"] == "[REDACTED]"
    assert "ValueError" in lines[2]["exc"]
    # Ordinary identifiers that merely start with gif_ survive.
    assert redact("module gif_service and job_abc") == "module gif_service and job_abc"


# --- metrics and the access log on a real app ------------------------------------------------


@pytest.fixture
def database(tmp_path):
    """A migrated SQLite database (the schema only ever comes from the migrations)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'gif.db'}")
    upgrade_engine(engine)
    yield engine
    engine.dispose()


def _app(session_factory) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/jobs/{job_id}")
    def get_job(job_id: str) -> dict:
        logging.getLogger("service.api.jobs").info("reading job")
        return {"id": job_id}

    install_observability(app, session_factory)
    return app


def test_request_counters_move_and_access_log_has_no_headers(database, log_stream):
    client = TestClient(_app(make_session_factory(database)))
    for _ in range(3):
        response = client.get("/v1/jobs/job_aaa", headers={"Authorization": f"Bearer {SECRET_KEY}",
                                                            "X-Request-ID": "req-42"})
        assert response.status_code == 200
        assert response.headers["x-request-id"] == "req-42"
    assert client.get("/nowhere/at/all").status_code == 404
    assert client.request("BREW", "/v1/jobs/job_aaa").status_code == 405
    generated = client.get("/v1/jobs/job_bbb").headers["x-request-id"]
    assert len(generated) == 32

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    ok = (("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "200"))
    assert samples[("gif_http_requests_total", ok)] == 4.0
    assert samples[("gif_http_requests_total",
                    (("method", "GET"), ("route", "unmatched"), ("status", "404")))] == 1.0
    assert samples[("gif_http_requests_total", (("method", "other"), ("route", "/v1/jobs/{job_id}"),
                                                ("status", "405")))] == 1.0
    assert not any(dict(labels).get("method") == "BREW" for _, labels in samples)
    count_key = ("gif_http_request_duration_seconds_count",
                 (("method", "GET"), ("route", "/v1/jobs/{job_id}")))
    assert samples[count_key] == 4.0

    text = log_stream.getvalue()
    assert SECRET_KEY not in text
    lines = _lines(log_stream)
    handler_lines = [line for line in lines if line["logger"] == "service.api.jobs"]
    assert [line["request_id"] for line in handler_lines[:3]] == ["req-42"] * 3
    access = [line for line in lines if line["logger"] == "service.access"]
    assert access[0]["route"] == "/v1/jobs/{job_id}"
    assert access[0]["status"] == 200
    assert access[0]["job_id"] == "job_aaa"
    assert access[0]["request_id"] == "req-42"
    assert all("authorization" not in json.dumps(line).lower() for line in access)


def test_a_malformed_request_id_is_replaced(database):
    client = TestClient(_app(make_session_factory(database)))
    response = client.get("/v1/jobs/job_a", headers={"X-Request-ID": "<script>" + "x" * 100})
    assert response.headers["x-request-id"] != "<script>" + "x" * 100
    assert len(response.headers["x-request-id"]) == 32


def _seed_jobs(engine, rows: list[tuple[str, float | None]]) -> None:
    """Insert one job per (status, duration seconds or None = never started)."""
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    factory = make_session_factory(engine)
    with factory() as session:
        owner = Owner(name="alice")
        session.add(owner)
        session.flush()
        artifact = Artifact(owner_id=owner.id, sha256="0" * 64, size_bytes=1,
                            kind="checkpoint", media_type="application/octet-stream")
        session.add(artifact)
        session.flush()
        model = Model(owner_id=owner.id, name="m", arch="mlp", arch_kwargs={}, input={},
                      num_parameters=1, size_bytes=1, sha256="0" * 64, artifact_id=artifact.id)
        session.add(model)
        session.flush()
        for status, seconds in rows:
            started = now if seconds is not None else None
            finished = now + dt.timedelta(seconds=seconds) if seconds is not None else None
            if status == "running":
                finished = None
            session.add(Job(owner_id=owner.id, status=status, request={}, request_hash="h",
                            model_id=model.id, train_dataset_id="builtin:digits:train",
                            started_at=started, finished_at=finished))
        session.commit()


@pytest.fixture
def postgres_database(new_postgres_url):
    """A fresh, migrated PostgreSQL database (created by ``new_postgres_url``, dropped after)."""
    engine = make_engine(new_postgres_url)
    try:
        upgrade_engine(engine)
        yield engine
    finally:
        engine.dispose()


@pytest.mark.services
def test_job_series_on_postgresql(postgres_database):
    """timestamptz durations on PostgreSQL give the same histogram as on SQLite."""
    _check_job_series(postgres_database)


def test_job_gauges_and_duration_histogram_reflect_the_database(database):
    _check_job_series(database)


def _check_job_series(database) -> None:
    rows = [("queued", None)] * 3 + [("running", 4.0)] + [("succeeded", 2.0),
            ("succeeded", 40.0), ("succeeded", 5000.0), ("failed", 0.5), ("cancelled", None)]
    _seed_jobs(database, rows)
    client = TestClient(_app(make_session_factory(database)))
    samples = _samples(client.get("/metrics").text)

    assert samples[("gif_metrics_database_up", ())] == 1.0
    expected_counts = {"queued": 3, "running": 1, "succeeded": 3, "failed": 1, "cancelled": 1}
    for status, count in expected_counts.items():
        assert samples[("gif_jobs", (("status", status),))] == count
    assert samples[("gif_jobs_queued", ())] == 3

    succeeded = [2.0, 40.0, 5000.0]
    label = ("status", "succeeded")
    assert samples[("gif_job_duration_seconds_count", (label,))] == 3
    assert samples[("gif_job_duration_seconds_sum", (label,))] == pytest.approx(sum(succeeded))
    for bound in JOB_DURATION_BUCKETS:
        key = ("gif_job_duration_seconds_bucket", (("le", repr(bound)), label))
        assert samples[key] == sum(1 for s in succeeded if s <= bound), bound
    assert samples[("gif_job_duration_seconds_count", (("status", "failed"),))] == 1
    # A cancelled job that never started has no duration.
    assert samples[("gif_job_duration_seconds_count", (("status", "cancelled"),))] == 0

    # The gauges follow the database, not the process: a job leaves the queue.
    with make_session_factory(database)() as session:
        job = session.scalars(sa.select(Job).where(Job.status == "queued")).first()
        job.status = "running"
        session.commit()
    samples = _samples(client.get("/metrics").text)
    assert samples[("gif_jobs_queued", ())] == 2
    assert samples[("gif_jobs", (("status", "running"),))] == 2


def test_metrics_still_answer_when_the_database_is_gone(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'never-migrated.db'}")  # no jobs table
    client = TestClient(_app(make_session_factory(engine)))
    response = client.get("/metrics")
    assert response.status_code == 200
    samples = _samples(response.text)
    assert samples[("gif_metrics_database_up", ())] == 0.0
    assert not any(name == "gif_jobs" for name, _ in samples)
    engine.dispose()


def test_the_real_app_serves_metrics_without_a_key_and_never_logs_keys(tmp_path, log_stream):
    from service.app import create_app
    from service.auth import create_key
    from service.db.migrate import upgrade
    from service.settings import Settings

    settings = Settings(data_dir=tmp_path, runner="none")
    upgrade(settings)
    app = create_app(settings)
    with TestClient(app) as client:
        with app.state.session_factory() as session:
            key = create_key(session, "alice")
            session.commit()
        auth = {"Authorization": f"Bearer {key}"}
        assert client.get("/v1/models", headers=auth).status_code == 200
        wrong = client.get("/v1/models", headers={"Authorization": f"Bearer {SECRET_KEY}"})
        assert wrong.status_code == 401
        assert client.get("/v1/jobs/job_missing", headers=auth).status_code == 404
        response = client.get("/metrics")  # no Authorization header at all
        openapi = client.get("/openapi.json")
    assert openapi.status_code == 200
    paths = openapi.json()["paths"]
    assert "/metrics" in paths and "security" not in paths["/metrics"]["get"]
    assert {"/v1/jobs/{job_id}/report", "/v1/jobs/{job_id}/plots/{name}.png"} <= set(paths)
    assert response.status_code == 200
    samples = _samples(response.text)
    route = ("route", "/v1/models")
    assert samples[("gif_http_requests_total", (("method", "GET"), route, ("status", "200")))] == 1
    assert samples[("gif_http_requests_total", (("method", "GET"), route, ("status", "401")))] == 1
    assert samples[("gif_http_requests_total", (("method", "GET"), ("route", "/v1/jobs/{job_id}"),
                                                ("status", "404")))] == 1
    assert samples[("gif_jobs_queued", ())] == 0
    text = log_stream.getvalue()
    assert key not in text and SECRET_KEY not in text
    assert key[4:] not in text and "Bearer gif" not in text
    assert any(line.get("status") == 401 for line in _lines(log_stream))
