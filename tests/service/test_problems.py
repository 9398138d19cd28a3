"""Every error is RFC 9457 problem+json: unknown routes, wrong methods, a database that is
down (503, not 500), readiness."""

from __future__ import annotations

from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.service.conftest import assert_problem


def test_unknown_route_is_a_404_problem(client, alice):
    assert_problem(client.get("/v1/nothing-here", headers=alice), 404)


def test_wrong_method_is_a_405_problem_with_allow(client, alice):
    response = client.put("/v1/models", headers=alice)
    assert_problem(response, 405)
    # Starlette lists the methods of the first route matching the path.
    assert set(response.headers["allow"].replace(" ", "").split(",")) <= {"GET", "POST"}


def test_validation_error_names_the_field(client, alice):
    response = client.get("/v1/models?limit=0", headers=alice)
    body = assert_problem(response, 422, loc=["query", "limit"])
    assert "limit" in body["detail"]


def test_database_down_is_503_not_500(tmp_path):
    # Port 1 on localhost refuses connections: a real, unreachable PostgreSQL server.
    settings = Settings(
        data_dir=tmp_path,
        database_url="postgresql+psycopg://postgres@127.0.0.1:1/gif?connect_timeout=2",
        runner="none",
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        response = client.get("/v1/models", headers={"Authorization": "Bearer gif_whatever123"})
        assert_problem(response, 503)
        assert response.headers["retry-after"]
        assert_problem(client.get("/readyz"), 503)
        assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_reports_an_unmigrated_database(tmp_path):
    settings = Settings(data_dir=tmp_path, runner="none")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        body = assert_problem(client.get("/readyz"), 503)
        assert "migrat" in body["detail"]


def test_readyz_and_healthz_when_ready(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "database": "ok", "runner": "none"}
