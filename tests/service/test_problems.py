"""Every error is RFC 9457 problem+json: unknown routes, wrong methods, a database that is
down (503, not 500), readiness."""

from __future__ import annotations

import json

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


# ------------------------------------------------------------------ error details (issue 13.7)


def _job(uploaded, **fields) -> dict:
    return {"model_id": uploaded.model_id, "train_dataset_id": uploaded.dataset_id,
            "edit": {"kind": "remove_class", "class": 1}, **fields}


def test_a_schema_error_says_why_and_suggests_the_field_meant(client, alice, uploaded):
    cases = [
        ({"solvr": {}}, ["body", "solvr"], "unknown field 'solvr' (did you mean 'solver'?)"),
        ({"solver": {"max_itr": 3}}, ["body", "solver", "max_itr"],
         "unknown field 'max_itr' (did you mean 'max_iter'?)"),
        ({"method": "gf"}, ["body", "method"], "(did you mean 'gif'?)"),
        ({"edit": {"kind": "remove_clas", "class": 1}}, ["body", "edit"],
         "(did you mean 'remove_class'?)"),
        ({"zzzzzz": 1}, ["body", "zzzzzz"], "unknown field 'zzzzzz' (allowed: edit, method,"),
        ({"edit": {"kind": "remove_class"}}, ["body", "edit", "class"], "required"),
        ({"selection": {"ratio": 2}}, ["body", "selection", "ratio"],
         "less than or equal to 1"),
    ]
    for fields, loc, words in cases:
        response = client.post("/v1/jobs", headers=alice, json=_job(uploaded, **fields))
        body = assert_problem(response, 422, loc=loc)
        where = ".".join(str(i) for i in loc)
        assert f"invalid request: {where}: " in body["detail"], body["detail"]
        assert words in body["detail"], (fields, body["detail"])
        assert any(words in e["msg"] for e in body["errors"]), body["errors"]


def test_locations_never_hold_the_union_tag(client, alice, uploaded):
    """``class: -1`` (schema) and ``class: 10`` (checked against the data) name one place."""
    for value in (-1, 10, "x"):
        response = client.post("/v1/jobs", headers=alice,
                               json=_job(uploaded, edit={"kind": "remove_class", "class": value}))
        body = assert_problem(response, 422, loc=["body", "edit", "class"])
        assert all("remove_class" not in e["loc"] for e in body["errors"])
    response = client.post("/v1/jobs", headers=alice, json=_job(
        uploaded, edit={"kind": "relabel", "indices": [0, -1], "labels": [1, 2]}))
    assert_problem(response, 422, loc=["body", "edit", "indices", 1])


def test_a_spec_typo_is_named_with_the_field_meant(client, alice):
    spec = {"arch": "mlp", "arch_kwarg": {"in_features": 4}}
    response = client.post("/v1/models", headers=alice,
                           files={"file": ("m", b"x" * 16, "application/octet-stream")},
                           data={"spec": json.dumps(spec)})
    body = assert_problem(response, 422, loc=["body", "spec", "arch_kwarg"])
    assert "did you mean 'arch_kwargs'?" in body["detail"]


def test_authorization_errors_say_what_the_header_must_be(client, make_key):
    key = make_key("carol")
    cases = [
        ({}, "missing API key: send 'Authorization: Bearer <key>'"),
        ({"Authorization": key}, "without the 'Bearer' scheme: it must be "
                                 "'Authorization: Bearer <key>'"),
        ({"Authorization": f"Basic {key}"}, "scheme 'Basic' is not accepted"),
        ({"Authorization": "Bearer"}, "no key after 'Bearer'"),
        ({"Authorization": "Bearer gif_unknownunknown"}, "invalid or revoked API key"),
    ]
    for headers, words in cases:
        body = assert_problem(client.get("/v1/models", headers=headers), 401)
        assert words in body["detail"], body["detail"]
        assert key not in json.dumps(body)
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_an_unknown_builtin_dataset_lists_the_valid_ones(client, alice):
    from gif.builtins import builtin_dataset_ids

    body = assert_problem(client.get("/v1/datasets/builtin:nope:train", headers=alice), 404)
    assert "builtin:nope:train" in body["detail"]
    for dataset_id in builtin_dataset_ids():
        assert dataset_id in body["detail"]


def test_error_lists_are_capped_and_counted(client, alice, uploaded):
    fields = {f"unknown{i}": 0 for i in range(20)}
    fields["solver"] = {"max_iter": "a", "tol": "b", "damping": "c"}
    body = assert_problem(client.post("/v1/jobs", headers=alice, json=_job(uploaded, **fields)),
                          422)
    assert len(body["errors"]) == 20 and body["errors_omitted"] == 3
    assert body["detail"].endswith("(and 20 more)")
