"""Per-owner limits (docs/api.md Limits): queued jobs, stored bytes and request rate, each a 429
problem with ``Retry-After``; other owners unaffected; refused uploads leave nothing stored."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi.testclient import TestClient

from service.app import create_app
from service.auth import create_key
from service.db.migrate import upgrade
from service.db.session import engine_from_settings, make_session_factory, session_scope
from service.limits import RateLimiter, SharedRateLimiter, rate_limiter
from service.settings import Settings
from tests.service.conftest import (
    assert_problem,
    bearer,
    safetensors_bytes,
    tiny_dataset,
    tiny_state_dict,
    upload_dataset,
    upload_model,
)


@contextmanager
def limited(tmp_path, **limits) -> Iterator[tuple[TestClient, dict, dict, Settings]]:
    settings = Settings(data_dir=tmp_path / "data", runner="none", **limits)
    upgrade(settings)
    engine = engine_from_settings(settings)
    with session_scope(make_session_factory(engine)) as session:
        alice, bob = bearer(create_key(session, "alice")), bearer(create_key(session, "bob"))
    engine.dispose()
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client, alice, bob, settings


@contextmanager
def second_api_process(settings: Settings) -> Iterator[TestClient]:
    """Another app on the same database and settings: what a second API process serves."""
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def assert_429(response, retry_after: int | None = None) -> dict:
    problem = assert_problem(response, 429)
    seconds = int(response.headers["Retry-After"])
    assert seconds >= 1 and (retry_after is None or seconds == retry_after)
    return problem


def _model_and_dataset(client, headers) -> tuple[str, str]:
    model = upload_model(client, headers)
    x, y = tiny_dataset()
    dataset = upload_dataset(client, headers, x, y)
    return model.json()["id"], dataset.json()["id"]


def test_queued_jobs_past_the_limit_are_429_until_one_leaves_the_queue(tmp_path):
    with limited(tmp_path, max_queued_jobs_per_owner=2, limit_retry_after_s=7) as (
            client, alice, bob, _):
        model_id, dataset_id = _model_and_dataset(client, alice)
        body = {"model_id": model_id, "train_dataset_id": dataset_id,
                "edit": {"kind": "remove_class", "class": 1}}
        idem = {**alice, "Idempotency-Key": "first"}
        first = client.post("/v1/jobs", headers=idem, json=body)
        assert first.status_code == 202
        assert client.post("/v1/jobs", headers=alice, json=body).status_code == 202
        problem = assert_429(client.post("/v1/jobs", headers=alice, json=body), 7)
        assert "GIF_MAX_QUEUED_JOBS_PER_OWNER" in problem["detail"]
        assert len(client.get("/v1/jobs", headers=alice).json()["data"]) == 2
        # A repeat of an accepted submission is answered, limit or not.
        repeat = client.post("/v1/jobs", headers=idem, json=body)
        assert repeat.status_code == 200 and repeat.json()["id"] == first.json()["id"]
        # Another owner has its own count.
        bob_model, bob_data = _model_and_dataset(client, bob)
        bob_body = {**body, "model_id": bob_model, "train_dataset_id": bob_data}
        assert client.post("/v1/jobs", headers=bob, json=bob_body).status_code == 202
        client.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=alice)
        assert client.post("/v1/jobs", headers=alice, json=body).status_code == 202


def test_uploads_past_the_storage_limit_are_429_and_store_nothing(tmp_path):
    model_bytes = len(safetensors_bytes(tiny_state_dict()))
    with limited(tmp_path, max_stored_bytes_per_owner=model_bytes + 100,
                 max_upload_bytes=64 * 1024) as (
            client, alice, bob, settings):
        assert upload_model(client, alice).status_code == 201
        problem = assert_429(upload_model(client, alice), settings.limit_retry_after_s)
        assert "GIF_MAX_STORED_BYTES_PER_OWNER" in problem["detail"]
        x, y = tiny_dataset()
        assert_429(upload_dataset(client, alice, x, y))
        models = client.get("/v1/models", headers=alice).json()["data"]
        assert len(models) == 1
        stored = [p for p in settings.artifacts_dir.rglob("*") if p.is_file()]
        assert len(stored) == 1, stored  # the refused uploads left no file
        assert upload_model(client, bob).status_code == 201
        # An upload declaring more than the room left is refused before its body is read: a
        # body far over the upload cap is a 429, not a 413.
        assert_429(upload_model(client, alice, content=b"\0" * (4 * 1024 * 1024)))
        assert client.delete(f"/v1/models/{models[0]['id']}", headers=alice).status_code == 204
        assert upload_model(client, alice).status_code == 201


def test_requests_past_the_rate_are_429_per_owner_and_health_is_never_limited(tmp_path):
    with limited(tmp_path, rate_limit_per_minute=3) as (client, alice, bob, _):
        assert [client.get("/v1/models", headers=alice).status_code for _ in range(3)] == [
            200] * 3
        problem = assert_429(client.get("/v1/models", headers=alice))
        assert "GIF_RATE_LIMIT_PER_MINUTE" in problem["detail"]
        assert 1 <= int(client.get("/v1/jobs", headers=alice).headers["Retry-After"]) <= 20
        # A refused request's body is never read (as for a bad key).
        assert_429(client.post("/v1/jobs", headers=alice, content=b"{" * 1000))
        assert client.get("/v1/models", headers=bob).status_code == 200
        assert client.get("/healthz").status_code == 200
        assert [client.get("/healthz").status_code for _ in range(10)] == [200] * 10
        assert_problem(client.get("/v1/models"), 401)  # no key: 401, whatever the rate


def test_the_bucket_refills_at_the_rate():
    clock = [0.0]
    limiter = RateLimiter(per_minute=60)
    limiter._now = lambda: clock[0]  # type: ignore[method-assign]
    assert all(limiter.take("o") == 0 for _ in range(60))
    assert limiter.take("o") == 1.0  # one a second
    clock[0] = 0.5
    assert limiter.take("o") == 0.5
    clock[0] = 1.0
    assert limiter.take("o") == 0 and limiter.take("o") > 0
    clock[0] = 3600.0  # a long pause refills a minute's worth, no more
    assert sum(limiter.take("o") == 0 for _ in range(100)) == 60


def test_a_redis_broker_shares_the_rate_among_api_processes(tmp_path, redis_url):
    with limited(tmp_path, rate_limit_per_minute=4, broker_url=redis_url) as (
            client, alice, bob, settings):
        assert isinstance(client.app.state.limiter, SharedRateLimiter)
        with second_api_process(settings) as other:
            codes = [c.get("/v1/models", headers=alice).status_code
                     for c in (client, other, client, other)]
            assert codes == [200] * 4
            # the allowance is spent on both processes together, not 4 on each
            assert_429(other.get("/v1/models", headers=alice))
            problem = assert_429(client.get("/v1/models", headers=alice))
            assert "GIF_RATE_LIMIT_PER_MINUTE" in problem["detail"]
            assert other.get("/v1/models", headers=bob).status_code == 200


def test_without_a_redis_broker_the_rate_is_counted_in_the_process(tmp_path):
    assert isinstance(rate_limiter(Settings(data_dir=tmp_path, rate_limit_per_minute=5)),
                      RateLimiter)
    assert rate_limiter(Settings(data_dir=tmp_path)) is None


def test_the_shared_bucket_refills_at_the_rate_on_the_redis_clock(redis_url):
    limiter = SharedRateLimiter(per_minute=60, redis_url=redis_url,
                                prefix=f"gif:test-rate:{uuid.uuid4().hex}:")

    async def takes() -> list[float]:
        try:
            return [await limiter.take("o") for _ in range(61)]
        finally:
            await limiter.aclose()

    waits = asyncio.run(takes())
    assert waits[:60] == [0.0] * 60
    assert 0.5 < waits[60] <= 1.0  # a token a second, less what refilled during the 60 calls


def test_an_unreachable_redis_leaves_requests_unlimited_and_says_so(tmp_path, caplog):
    # nothing listens on port 1: the counter is unreachable, the service is not
    with limited(tmp_path, rate_limit_per_minute=1,
                 broker_url="redis://127.0.0.1:1/0") as (client, alice, _, _settings):
        with caplog.at_level(logging.WARNING, logger="service.limits"):
            codes = [client.get("/v1/models", headers=alice).status_code for _ in range(3)]
        assert codes == [200] * 3
        warned = [r for r in caplog.records if "rate limit not applied" in r.getMessage()]
        assert len(warned) == 1  # once a minute, not once a request
