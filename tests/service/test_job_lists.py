"""Job lists (docs/api.md Jobs, Limits): ``metadata`` (capped, echoed, filterable), the filters
``status``/``model_id``/``method``/``metadata[key]=value``, summaries that stay small whatever
the request holds, and cursors that survive their item's deletion or leaving the filter."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from service.app import create_app
from service.auth import create_key
from service.db.migrate import upgrade
from service.db.models import Job, utcnow
from service.db.session import engine_from_settings, make_session_factory, session_scope
from service.schemas import MAX_METADATA_KEYS
from service.settings import Settings
from tests.service.conftest import (
    assert_problem,
    bearer,
    tiny_dataset,
    upload_dataset,
    upload_model,
)


def body(model_id: str, dataset_id: str, **extra) -> dict:
    return {"model_id": model_id, "train_dataset_id": dataset_id,
            "edit": {"kind": "remove_class", "class": 1}, **extra}


def submit(client, headers, model_id, dataset_id, **extra) -> dict:
    response = client.post("/v1/jobs", headers=headers, json=body(model_id, dataset_id, **extra))
    assert response.status_code == 202, response.text
    return response.json()


def ids(page: dict) -> list[str]:
    return [j["id"] for j in page["data"]]


def test_metadata_is_echoed_kept_out_of_the_request_and_held_by_idempotency(client, alice,
                                                                           uploaded):
    job = submit(client, alice, uploaded.model_id, uploaded.dataset_id,
                 metadata={"ticket": "GDPR-1", "team": "ml"})
    assert job["metadata"] == {"ticket": "GDPR-1", "team": "ml"}
    assert "metadata" not in job["request"] and job["method"] == "gif"
    fetched = client.get(f"/v1/jobs/{job['id']}", headers=alice).json()
    assert fetched["metadata"] == job["metadata"]
    listed = client.get("/v1/jobs", headers=alice).json()["data"][0]
    assert listed["metadata"] == job["metadata"]

    idem = {**alice, "Idempotency-Key": "k1"}
    first = client.post("/v1/jobs", headers=idem, json=body(
        uploaded.model_id, uploaded.dataset_id, metadata={"a": "1"}))
    again = client.post("/v1/jobs", headers=idem, json=body(
        uploaded.model_id, uploaded.dataset_id, metadata={"a": "1"}))
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    other = client.post("/v1/jobs", headers=idem, json=body(
        uploaded.model_id, uploaded.dataset_id, metadata={"a": "2"}))
    assert_problem(other, 422, loc=["header", "Idempotency-Key"])


@pytest.mark.parametrize("metadata, loc", [
    ({f"k{i}": "v" for i in range(MAX_METADATA_KEYS + 1)}, ["body", "metadata"]),
    ({"k" * 65: "v"}, None),
    ({"": "v"}, None),
    ({'a"b': "v"}, None),
    ({"$[0]": "v"}, None),
    ({"k": "v" * 513}, ["body", "metadata", "k"]),
    ({"k": 3}, ["body", "metadata", "k"]),
    ({"k": None}, ["body", "metadata", "k"]),
    (["k", "v"], ["body", "metadata"]),
])
def test_metadata_beyond_its_caps_is_422_and_queues_nothing(client, alice, uploaded, metadata,
                                                            loc):
    response = client.post("/v1/jobs", headers=alice,
                           json=body(uploaded.model_id, uploaded.dataset_id, metadata=metadata))
    assert_problem(response, 422, loc=loc)
    assert client.get("/v1/jobs", headers=alice).json()["data"] == []


def test_a_flood_of_metadata_keys_is_refused_fast_with_one_error(client, alice, uploaded):
    flood = {f"key{i}": "v" for i in range(100_000)}
    started = time.perf_counter()
    response = client.post("/v1/jobs", headers=alice,
                           json=body(uploaded.model_id, uploaded.dataset_id, metadata=flood))
    assert time.perf_counter() - started < 5.0
    problem = assert_problem(response, 422, loc=["body", "metadata"])
    assert len(response.content) < 4096 and len(problem["errors"]) == 1


@pytest.fixture
def roomy_client(tmp_path):
    """An app whose uploads may be a few MB (the shared fixture caps them at 64 KiB)."""
    settings = Settings(data_dir=tmp_path / "roomy", runner="none")
    upgrade(settings)
    engine = engine_from_settings(settings)
    with session_scope(make_session_factory(engine)) as session:
        headers = bearer(create_key(session, "roomy"))
    engine.dispose()
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client, headers


def test_lists_hold_summaries_not_the_request(roomy_client):
    client, headers = roomy_client
    model = upload_model(client, headers).json()
    x, y = tiny_dataset(n=200_001)
    dataset = upload_dataset(client, headers, x, y)
    assert dataset.status_code == 201, dataset.text
    indices = list(range(200_000))
    jobs = [submit(client, headers, model["id"], dataset.json()["id"],
                   edit={"kind": "remove_samples", "indices": indices}) for _ in range(2)]
    full = client.get(f"/v1/jobs/{jobs[0]['id']}", headers=headers)
    assert full.json()["request"]["edit"]["indices"] == indices  # the full request: here only
    page = client.get("/v1/jobs", headers=headers)
    assert page.status_code == 200
    summaries = page.json()["data"]
    assert all("request" not in j and "result" not in j for j in summaries)
    assert [j["edit"] for j in summaries] == [
        {"kind": "remove_samples", "class": None, "count": 200_000}] * 2
    assert len(page.content) < 3_000 < len(full.content) / 100


def _two_models_and_a_dataset(client, headers) -> tuple[str, str, str]:
    first = upload_model(client, headers).json()["id"]
    second = upload_model(client, headers).json()["id"]
    x, y = tiny_dataset()
    return first, second, upload_dataset(client, headers, x, y).json()["id"]


def _check_filters(client, headers) -> None:
    m1, m2, ds = _two_models_and_a_dataset(client, headers)
    a = submit(client, headers, m1, ds, metadata={"team": "ml", "ticket": "1"})
    b = submit(client, headers, m1, ds, metadata={"team": "ml", "ticket": "2"}, method="fif")
    c = submit(client, headers, m2, ds, metadata={"team": "ops"})
    d = submit(client, headers, m2, ds)

    def listed(query: str) -> list[str]:
        response = client.get(f"/v1/jobs?{query}", headers=headers)
        assert response.status_code == 200, response.text
        return ids(response.json())

    assert listed("metadata[team]=ml") == [b["id"], a["id"]]
    assert listed("metadata[team]=ml&metadata[ticket]=2") == [b["id"]]
    assert listed("metadata[team]=ml&metadata[ticket]=3") == []
    assert listed("metadata[team]=ops") == [c["id"]]
    assert listed("metadata[nothing]=x") == []
    assert listed(f"model_id={m2}") == [d["id"], c["id"]]
    assert listed("method=fif") == [b["id"]]
    assert listed(f"method=gif&model_id={m1}") == [a["id"]]
    assert listed("metadata[team]=ml&method=gif&status=queued") == [a["id"]]
    assert listed("status=running") == []
    # Values with quotes and SQL are data, never syntax; keys are names (path-safe).
    odd = submit(client, headers, m1, ds, metadata={"a.b:c/d-e_f": "x' OR '1'='1\"",
                                                     "u": "é\u2028"})
    assert listed("metadata[a.b:c/d-e_f]=x%27%20OR%20%271%27%3D%271%22") == [odd["id"]]
    assert listed("metadata[u]=%C3%A9%E2%80%A8") == [odd["id"]]
    assert listed("metadata[a.b:c/d-e_f]=x") == []
    assert_problem(client.get('/v1/jobs?metadata[a"b]=x', headers=headers), 422)

    assert_problem(client.get("/v1/jobs?method=sgd", headers=headers), 422,
                   loc=["query", "method"])
    too_many = "&".join(f"metadata[k{i}]=v" for i in range(MAX_METADATA_KEYS + 1))
    assert_problem(client.get(f"/v1/jobs?{too_many}", headers=headers), 422)
    assert_problem(client.get(f"/v1/jobs?metadata[{'k' * 65}]=v", headers=headers), 422)
    assert_problem(client.get("/v1/jobs?metadata[]=v", headers=headers), 422)


def test_filters_combine_with_and_on_sqlite(client, alice):
    _check_filters(client, alice)


@pytest.mark.services
def test_filters_combine_with_and_on_postgresql(new_postgres_url, tmp_path):
    settings = Settings(data_dir=tmp_path, database_url=new_postgres_url, runner="none")
    upgrade(settings)
    engine = engine_from_settings(settings)
    with session_scope(make_session_factory(engine)) as session:
        headers = bearer(create_key(session, "pg-lists"))
    engine.dispose()
    walk_engine = engine_from_settings(settings)
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            _check_filters(client, headers)
            _check_cursor_walk(client, headers, make_session_factory(walk_engine))
    finally:
        walk_engine.dispose()


def _check_cursor_walk(client, headers, session_factory) -> None:
    """Walk ``?status=queued`` two at a time while the jobs already seen start or vanish:
    every page continues where the last ended, and every job that stayed queued is seen once."""
    m1, _, ds = _two_models_and_a_dataset(client, headers)
    jobs = [submit(client, headers, m1, ds)["id"] for _ in range(9)]  # newest last
    seen: list[str] = []
    after = None
    while True:
        query = f"status=queued&model_id={m1}&limit=2" + (f"&after={after}" if after else "")
        response = client.get(f"/v1/jobs?{query}", headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        seen += ids(page)
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        after = page["next_cursor"]
        last, first = page["data"][-1]["id"], page["data"][0]["id"]
        with session_scope(session_factory) as session:
            # The cursor's own item leaves the filter; the page's other one is deleted.
            session.execute(sa.update(Job).where(Job.id == last)
                            .values(status="running", started_at=utcnow()))
            session.execute(sa.delete(Job).where(Job.id == first))
    assert len(seen) == len(set(seen)) == len(jobs)
    assert seen == list(reversed(jobs))

    # A plain item id still works as `after`, also once that item left the filter.
    queued = ids(client.get(f"/v1/jobs?status=queued&model_id={m1}", headers=headers).json())
    running = ids(client.get(f"/v1/jobs?status=running&model_id={m1}", headers=headers).json())
    rest = client.get(f"/v1/jobs?status=queued&model_id={m1}&after={running[0]}",
                      headers=headers).json()
    assert ids(rest) == [j for j in queued if jobs.index(j) < jobs.index(running[0])]


def test_cursors_survive_deletion_and_leaving_the_filter(client, alice, session_factory):
    _check_cursor_walk(client, alice, session_factory)


def test_bad_cursors_are_422(client, alice, bob, uploaded):
    job = submit(client, alice, uploaded.model_id, uploaded.dataset_id)
    for after in ["job_nope", "cur_", "cur_!!!", "cur_" + "A" * 40,
                  "cur_WyJub3QgYSBkYXRlIiwiaWQiXQ",  # ["not a date","id"]
                  "cur_WyIyMDI0LTAxLTAxVDAwOjAwOjAwIiwxXQ"]:  # a naive time, a number id
        assert_problem(client.get(f"/v1/jobs?after={after}", headers=alice), 422,
                       loc=["query", "after"])
    # Another owner's id is not a position in bob's list.
    assert_problem(client.get(f"/v1/jobs?after={job['id']}", headers=bob), 422,
                   loc=["query", "after"])
    page = client.get("/v1/jobs?limit=1", headers=alice).json()
    assert page == {"data": page["data"], "has_more": False, "next_cursor": None}


def test_models_and_datasets_pages_carry_cursors_too(client, alice):
    made = [upload_model(client, alice).json()["id"] for _ in range(3)]
    first = client.get("/v1/models?limit=2", headers=alice).json()
    rest = client.get(f"/v1/models?limit=2&after={first['next_cursor']}", headers=alice).json()
    assert ids(first) + ids(rest) == list(reversed(made))
    client.delete(f"/v1/models/{made[1]}", headers=alice)  # the cursor's item goes
    again = client.get(f"/v1/models?limit=2&after={first['next_cursor']}", headers=alice).json()
    assert ids(again) == [made[0]]

    x, y = tiny_dataset()
    for _ in range(2):
        upload_dataset(client, alice, x, y)
    walked, after = [], None
    while True:
        page = client.get("/v1/datasets?limit=1" + (f"&after={after}" if after else ""),
                          headers=alice).json()
        walked += ids(page)
        if not page["has_more"]:
            break
        after = page["next_cursor"]
    assert len(walked) == len(set(walked)) >= 2
