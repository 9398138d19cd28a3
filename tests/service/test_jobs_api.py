"""``/v1/jobs`` with runner ``none`` (jobs stay queued): submission and its validation,
Idempotency-Key, listing, cancel, events (JSON and SSE), metrics, owner scoping."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pytest
import sqlalchemy as sa

from service.db.models import Job, JobEvent, Metric, utcnow
from service.db.session import session_scope
from tests.service.conftest import assert_problem, upload_dataset

JOB_FIELDS = {
    "id", "status", "created_at", "started_at", "finished_at", "request", "progress", "error",
    "result",
}


def job_body(uploaded, **overrides) -> dict:
    body = {
        "model_id": uploaded.model_id,
        "train_dataset_id": uploaded.dataset_id,
        "edit": {"kind": "remove_class", "class": 1},
    }
    body.update(overrides)
    return body


def test_submit_returns_202_location_and_normalised_request(client, alice, uploaded, app):
    response = client.post("/v1/jobs", headers=alice, json=job_body(uploaded))
    assert response.status_code == 202, response.text
    job = response.json()
    assert set(job) >= JOB_FIELDS
    assert job["id"].startswith("job_")
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["started_at"] is None and job["result"] is None and job["error"] is None
    request = job["request"]
    assert request["edit"] == {"kind": "remove_class", "class": 1}
    assert request["model_id"] == uploaded.model_id
    assert request["method"] == "gif" and request["solver"]["algorithm"] == "lsqr"
    assert request["selection"] == {"criterion": "topk_gradients", "ratio": 0.1, "threshold": None}
    assert app.state.dispatcher.submitted == [job["id"]]
    assert client.get(f"/v1/jobs/{job['id']}", headers=alice).json() == job


def test_a_sent_job_is_marked_enqueued_so_the_reaper_leaves_it(
    client, alice, uploaded, session_factory
):
    from service.jobs.reaper import unsent_queued_jobs

    job_id = client.post("/v1/jobs", headers=alice, json=job_body(uploaded)).json()["id"]
    with session_scope(session_factory) as session:
        row = session.get(Job, job_id)
        assert row.enqueued_at is not None and row.enqueued_at >= row.created_at
        assert unsent_queued_jobs(session, older_than_s=0.0) == []  # age aside: sent


def test_idempotency_key_same_body_same_job_different_body_422(client, alice, uploaded, app):
    headers = {**alice, "Idempotency-Key": "retry-1"}
    first = client.post("/v1/jobs", headers=headers, json=job_body(uploaded))
    assert first.status_code == 202
    # Same request, with a default spelled out: the normalised bodies are equal.
    again = client.post("/v1/jobs", headers=headers, json=job_body(uploaded, method="gif"))
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    changed = client.post(
        "/v1/jobs", headers=headers, json=job_body(uploaded, edit={"kind": "remove_class",
                                                                   "class": 2})
    )
    assert_problem(changed, 422, loc=["header", "Idempotency-Key"])
    assert app.state.dispatcher.submitted == [first.json()["id"]]
    other_key = client.post("/v1/jobs", headers={**alice, "Idempotency-Key": "retry-2"},
                            json=job_body(uploaded))
    assert other_key.status_code == 202 and other_key.json()["id"] != first.json()["id"]


@pytest.mark.parametrize(
    ("overrides", "loc"),
    [
        ({"model_id": "mdl_missing"}, ["body", "model_id"]),
        ({"train_dataset_id": "ds_missing"}, ["body", "train_dataset_id"]),
        ({"train_dataset_id": "builtin:nope:train"}, ["body", "train_dataset_id"]),
        ({"edit": {"kind": "remove_class", "class": 3}}, ["body", "edit", "class"]),
        ({"edit": {"kind": "remove_samples", "indices": [0, 30]}}, ["body", "edit", "indices", 1]),
        # One location style: the union member pydantic names (relabel) is not in the loc.
        ({"edit": {"kind": "relabel", "indices": [0, 1], "labels": [1]}},
         ["body", "edit"]),
        ({"edit": {"kind": "relabel", "indices": [0], "labels": [7]}},
         ["body", "edit", "labels", 0]),
        ({"edit": {"kind": "remove_class"}}, ["body", "edit", "class"]),
        ({"edit": {"kind": "remove_class", "class": -1}}, ["body", "edit", "class"]),
        ({"selection": {"ratio": 0}}, ["body", "selection", "ratio"]),
        ({"selection": {"ratio": 1.5}}, ["body", "selection", "ratio"]),
        ({"mehtod": "gif"}, ["body", "mehtod"]),
        ({"eval": {"datasets": {"test": "ds_nope"}}}, ["body", "eval", "datasets", "test"]),
        ({"eval": {"datasets": {"retain": "builtin:digits:test"}}},
         ["body", "eval", "datasets", "retain"]),
        ({"step": {"holdout_dataset_id": "ds_nope"}}, ["body", "step", "holdout_dataset_id"]),
        ({"step": {"holdout_dataset_id": "builtin:digits:test"}},  # 64 features, not 4
         ["body", "step", "holdout_dataset_id"]),
        # digits samples are 1×8×8 = 64 features; the model takes 4.
        ({"train_dataset_id": "builtin:digits:train"}, ["body", "train_dataset_id"]),
        # MINRES needs a symmetric system (not GIF's H[:,S]) and solves it undamped.
        ({"solver": {"algorithm": "minres"}}, ["body", "solver", "algorithm"]),
        ({"method": "fif", "solver": {"algorithm": "minres", "damping": 0.01}},
         ["body", "solver", "damping"]),
    ],
)
def test_invalid_requests_are_422_naming_the_field_and_queue_nothing(
    client, alice, uploaded, app, overrides, loc
):
    response = client.post("/v1/jobs", headers=alice, json=job_body(uploaded, **overrides))
    assert_problem(response, 422, loc=loc)
    assert app.state.dispatcher.submitted == []
    assert client.get("/v1/jobs", headers=alice).json()["data"] == []


def test_labels_beyond_the_model_are_422(client, alice, uploaded):
    x = np.zeros((10, 4), dtype=np.float32)
    y = np.arange(10) % 5  # 5 classes; the model has 3 outputs
    dataset_id = upload_dataset(client, alice, x, y, name="five").json()["id"]
    response = client.post("/v1/jobs", headers=alice,
                           json=job_body(uploaded, train_dataset_id=dataset_id))
    assert "labels up to 4" in assert_problem(response, 422, loc=["body", "train_dataset_id"])[
        "detail"
    ]


def test_other_owners_models_and_jobs_are_invisible(client, alice, bob, uploaded):
    as_bob = client.post("/v1/jobs", headers=bob, json=job_body(uploaded))
    assert_problem(as_bob, 422, loc=["body", "model_id"])
    job_id = client.post("/v1/jobs", headers=alice, json=job_body(uploaded)).json()["id"]
    for method, path in [
        ("GET", f"/v1/jobs/{job_id}"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("GET", f"/v1/jobs/{job_id}/metrics"),
    ]:
        assert_problem(client.request(method, path, headers=bob), 404)
    assert client.get("/v1/jobs", headers=bob).json() == {
        "data": [], "has_more": False, "next_cursor": None
    }


def _set_status(session_factory, job_id: str, status: str, **values) -> None:
    with session_scope(session_factory) as session:
        session.execute(sa.update(Job).where(Job.id == job_id).values(status=status, **values))


def test_list_filters_by_status_and_pages_newest_first(client, alice, uploaded, session_factory):
    ids = [client.post("/v1/jobs", headers=alice, json=job_body(uploaded)).json()["id"]
           for _ in range(3)]
    _set_status(session_factory, ids[1], "running", started_at=utcnow())
    everything = client.get("/v1/jobs", headers=alice).json()["data"]
    assert [j["id"] for j in everything] == list(reversed(ids))
    running = client.get("/v1/jobs?status=running", headers=alice).json()
    assert [j["id"] for j in running["data"]] == [ids[1]]
    page = client.get("/v1/jobs?status=queued&limit=1", headers=alice).json()
    assert [j["id"] for j in page["data"]] == [ids[2]] and page["has_more"]
    rest = client.get(f"/v1/jobs?status=queued&limit=1&after={ids[2]}", headers=alice).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and not rest["has_more"]
    assert_problem(client.get("/v1/jobs?status=exploded", headers=alice), 422,
                   loc=["query", "status"])


def test_cancel_queued_running_and_terminal(client, alice, uploaded, session_factory):
    queued, running, done = (
        client.post("/v1/jobs", headers=alice, json=job_body(uploaded)).json()["id"]
        for _ in range(3)
    )
    cancelled = client.post(f"/v1/jobs/{queued}/cancel", headers=alice)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    assert cancelled.json()["error"] is None  # cancelled is not failed
    again = client.post(f"/v1/jobs/{queued}/cancel", headers=alice).json()
    assert again["status"] == "cancelled"
    assert again["finished_at"] == cancelled.json()["finished_at"]

    _set_status(session_factory, running, "running", started_at=utcnow())
    flagged = client.post(f"/v1/jobs/{running}/cancel", headers=alice).json()
    assert flagged["status"] == "running" and flagged["cancel_requested"] is True

    _set_status(session_factory, done, "succeeded", finished_at=utcnow(), result={"scale": 1.0})
    unchanged = client.post(f"/v1/jobs/{done}/cancel", headers=alice).json()
    assert unchanged["status"] == "succeeded" and unchanged["cancel_requested"] is False


def _add_events(session_factory, job_id: str, count: int, start: int = 1) -> None:
    with session_scope(session_factory) as session:
        for seq in range(start, start + count):
            session.add(JobEvent(job_id=job_id, seq=seq, at=utcnow() + timedelta(seconds=seq),
                                 level="info", phase="solve", message=f"event {seq}",
                                 data={"iteration": seq}))


def test_events_as_json_list(client, alice, uploaded, session_factory):
    job_id = client.post("/v1/jobs", headers=alice, json=job_body(uploaded)).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}/events", headers=alice).json() == []
    _add_events(session_factory, job_id, 3)
    events = client.get(f"/v1/jobs/{job_id}/events", headers=alice).json()
    assert [e["seq"] for e in events] == [1, 2, 3]
    assert set(events[0]) == {"seq", "at", "level", "phase", "message", "data"}
    assert events[2]["data"] == {"iteration": 3}
    later = client.get(f"/v1/jobs/{job_id}/events?after_seq=2", headers=alice).json()
    assert [e["seq"] for e in later] == [3]


def _parse_sse(text: str) -> list[tuple[str, str]]:
    messages = []
    for block in text.strip().split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
        )
        if fields:
            messages.append((fields["event"], fields["data"]))
    return messages


def test_event_stream_replays_and_ends_when_the_job_ends(client, alice, uploaded,
                                                         session_factory):
    job_id = client.post("/v1/jobs", headers=alice, json=job_body(uploaded)).json()["id"]
    _add_events(session_factory, job_id, 2)
    _set_status(session_factory, job_id, "failed", finished_at=utcnow(),
                error={"code": "solver_diverged", "message": "residual grew"})
    with client.stream("GET", f"/v1/jobs/{job_id}/events",
                       headers={**alice, "Accept": "text/event-stream"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    messages = _parse_sse(text)
    assert [m[0] for m in messages] == ["job_event", "job_event", "end"]
    assert [json.loads(m[1])["seq"] for m in messages[:2]] == [1, 2]
    assert json.loads(messages[-1][1]) == {"status": "failed"}
    resumed = client.get(f"/v1/jobs/{job_id}/events",
                         headers={**alice, "Accept": "text/event-stream", "Last-Event-ID": "1"})
    assert [json.loads(d).get("seq") for _, d in _parse_sse(resumed.text)] == [2, None]


def test_event_stream_follows_a_live_job(client, alice, uploaded, session_factory):
    """Events written while the stream is open arrive, and the stream ends at the end."""
    import threading
    import time

    job_id = client.post("/v1/jobs", headers=alice, json=job_body(uploaded)).json()["id"]

    def worker():
        time.sleep(0.3)
        _add_events(session_factory, job_id, 1)
        time.sleep(0.6)
        _add_events(session_factory, job_id, 1, start=2)
        _set_status(session_factory, job_id, "succeeded", finished_at=utcnow())

    thread = threading.Thread(target=worker)
    thread.start()
    response = client.get(f"/v1/jobs/{job_id}/events",
                          headers={**alice, "Accept": "text/event-stream"})
    thread.join()
    messages = _parse_sse(response.text)
    assert [e for e, _ in messages] == ["job_event", "job_event", "end"]
    assert json.loads(messages[-1][1]) == {"status": "succeeded"}


def test_metrics_409_until_present_then_grouped_by_stage(client, alice, uploaded,
                                                         session_factory):
    job_id = client.post("/v1/jobs", headers=alice, json=job_body(uploaded)).json()["id"]
    assert_problem(client.get(f"/v1/jobs/{job_id}/metrics", headers=alice), 409)
    with session_scope(session_factory) as session:
        session.add(Metric(job_id=job_id, stage="before", dataset="forget",
                           values={"accuracy": 0.9}))
        session.add(Metric(job_id=job_id, stage="after", dataset="forget",
                           values={"accuracy": 0.1}))
        session.add(Metric(job_id=job_id, stage="after", dataset="_summary",
                           values={"score": 0.8}))
    metrics = client.get(f"/v1/jobs/{job_id}/metrics", headers=alice).json()
    assert metrics == {
        "job_id": job_id,
        "before": {"forget": {"accuracy": 0.9}},
        "after": {"forget": {"accuracy": 0.1}, "score": 0.8},
    }


def test_model_in_use_cannot_be_deleted(client, alice, uploaded):
    job_id = client.post("/v1/jobs", headers=alice, json=job_body(uploaded)).json()["id"]
    assert_problem(client.delete(f"/v1/models/{uploaded.model_id}", headers=alice), 409)
    assert_problem(client.delete(f"/v1/datasets/{uploaded.dataset_id}", headers=alice), 409)
    client.post(f"/v1/jobs/{job_id}/cancel", headers=alice)
    assert client.delete(f"/v1/models/{uploaded.model_id}", headers=alice).status_code == 204
    assert client.get(f"/v1/jobs/{job_id}", headers=alice).json()["status"] == "cancelled"


def test_job_submission_with_builtin_eval_and_relabel(client, alice, uploaded):
    body = job_body(uploaded, edit={"kind": "relabel", "indices": [0, 4], "labels": [2, 0]},
                    method="fif", solver={"algorithm": "cg", "max_iter": 5})
    response = client.post("/v1/jobs", headers=alice, json=body)
    assert response.status_code == 202, response.text
    request = response.json()["request"]
    assert request["method"] == "fif"
    assert request["solver"]["algorithm"] == "cg" and request["solver"]["max_iter"] == 5
    assert request["solver"]["tol"] == 1e-4  # default kept beside the given fields


def test_oversized_json_body_is_413(client, alice, app):
    from service.app import MAX_JSON_BODY_BYTES

    huge = b'{"edit": {"kind": "remove_samples", "indices": [' + b"1," * (MAX_JSON_BODY_BYTES // 2)
    response = client.post(
        "/v1/jobs", headers={**alice, "Content-Type": "application/json"}, content=huge + b"1]}}"
    )
    assert_problem(response, 413)
    # Streamed without a Content-Length: counted while it arrives.
    chunks = iter([huge[i : i + (1 << 20)] for i in range(0, len(huge), 1 << 20)] + [b"1]}}"])
    streamed = client.post(
        "/v1/jobs", headers={**alice, "Content-Type": "application/json"}, content=chunks
    )
    assert_problem(streamed, 413)
    assert app.state.dispatcher.submitted == []


def test_last_event_id_must_be_an_event_seq(client, alice, uploaded):
    """A reconnecting client sends back an ``id:`` we wrote: a seq. Anything else (a number
    past 64 bits, which the database could not compare, or text) is a 422 before the stream
    starts, never a stream that breaks."""
    job_id = client.post("/v1/jobs", headers=alice, json=job_body(uploaded)).json()["id"]
    for bad in (str(2**64), str(2**31), "-1", "12a", "1" * 40):
        response = client.get(f"/v1/jobs/{job_id}/events", headers={
            **alice, "Accept": "text/event-stream", "Last-Event-ID": bad})
        assert_problem(response, 422, loc=["header", "Last-Event-ID"])


def test_minres_is_accepted_for_the_symmetric_methods_and_ignored_by_training_ones(
    client, alice, uploaded
):
    for method in ("fif", "pif", "if"):
        body = job_body(uploaded, method=method, solver={"algorithm": "minres"})
        assert client.post("/v1/jobs", headers=alice, json=body).status_code == 202, method
    body = job_body(uploaded, method="finetune", solver={"algorithm": "minres"})
    assert client.post("/v1/jobs", headers=alice, json=body).status_code == 202

