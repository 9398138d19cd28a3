"""Deletion is erasure (docs/erasure.md, issue 11) through the routes, on a real SQLite database and
store: bytes go with the last reference, 409 names the job that uses an object (model, train,
evaluation, holdout), jobs are erased with their request and events, every erasure leaves an
owner-scoped record, retention erases old objects on a controlled clock, a full disk is 507."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from service.db.models import ApiKey, Artifact, Job, JobEvent, utcnow
from service.retention import sweep_retention
from service.settings import Settings
from service.storage import ArtifactStore
from tests.service.conftest import (
    assert_problem,
    npz_bytes,
    safetensors_bytes,
    tiny_dataset,
    tiny_state_dict,
    upload_dataset,
    upload_model,
)

EDIT = {"kind": "remove_samples", "indices": [0, 1]}


def _store(settings: Settings) -> ArtifactStore:
    return ArtifactStore(settings.artifacts_dir)


def _files(settings: Settings) -> list[str]:
    root = settings.artifacts_dir
    return sorted(p.name for p in root.glob("??/*"))


def _submit(client, headers, uploaded, **body):
    response = client.post("/v1/jobs", headers=headers, json={
        "model_id": uploaded.model_id, "train_dataset_id": uploaded.dataset_id, "edit": EDIT,
        **body})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _erasures(client, headers, **params):
    response = client.get("/v1/erasures", headers=headers, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def _key_id(session_factory, owner_name: str) -> str:
    from service.db.models import Owner
    with session_factory() as session:
        return session.scalar(sa.select(ApiKey.id).join(Owner, Owner.id == ApiKey.owner_id)
                              .where(Owner.name == owner_name))


def test_deleting_a_dataset_removes_its_file_and_records_the_erasure(
        client, alice, bob, uploaded, settings, session_factory):
    dataset = client.get(f"/v1/datasets/{uploaded.dataset_id}", headers=alice).json()
    assert _store(settings).exists(dataset["sha256"])

    response = client.delete(f"/v1/datasets/{uploaded.dataset_id}", headers=alice)

    assert response.status_code == 204
    assert not _store(settings).exists(dataset["sha256"])
    assert dataset["sha256"] not in _files(settings)
    assert list(settings.artifacts_dir.joinpath("tmp").iterdir()) == []
    assert_problem(client.get(f"/v1/datasets/{uploaded.dataset_id}", headers=alice), 404)
    assert_problem(client.delete(f"/v1/datasets/{uploaded.dataset_id}", headers=alice), 404)
    [record] = _erasures(client, alice)["data"]
    assert record["kind"] == "dataset" and record["object_id"] == uploaded.dataset_id
    assert (record["name"], record["sha256"], record["size_bytes"]) == (
        "train", dataset["sha256"], dataset["size_bytes"])
    assert record["reason"] == "request" and record["job_id"] is None
    assert record["api_key_id"] == _key_id(session_factory, "alice")
    assert record["id"].startswith("era_") and record["erased_at"]
    assert _erasures(client, bob)["data"] == []  # owner-scoped


def test_deleting_a_model_removes_its_checkpoint(client, alice, uploaded, settings):
    model = client.get(f"/v1/models/{uploaded.model_id}", headers=alice).json()
    assert client.delete(f"/v1/models/{uploaded.model_id}", headers=alice).status_code == 204
    assert not _store(settings).exists(model["sha256"])
    assert_problem(client.get(f"/v1/models/{uploaded.model_id}/content", headers=alice), 404)
    [record] = _erasures(client, alice)["data"]
    assert (record["kind"], record["object_id"], record["sha256"]) == (
        "model", model["id"], model["sha256"])


def test_identical_bytes_stay_until_the_last_reference_goes(client, alice, bob, settings):
    content = safetensors_bytes(tiny_state_dict())
    first = upload_model(client, alice, content=content).json()
    second = upload_model(client, bob, content=content).json()
    assert first["sha256"] == second["sha256"] and _files(settings) == [first["sha256"]]

    assert client.delete(f"/v1/models/{first['id']}", headers=alice).status_code == 204

    download = client.get(f"/v1/models/{second['id']}/content", headers=bob)
    assert download.status_code == 200
    import hashlib
    assert hashlib.sha256(download.content).hexdigest() == second["sha256"]
    assert client.delete(f"/v1/models/{second['id']}", headers=bob).status_code == 204
    assert _files(settings) == []


def test_identical_datasets_share_one_file_until_both_are_deleted(client, alice, settings):
    x, y = tiny_dataset()
    one = upload_dataset(client, alice, x, y, name="one").json()
    two = upload_dataset(client, alice, x, y, name="two").json()
    assert one["sha256"] == two["sha256"]
    assert client.delete(f"/v1/datasets/{one['id']}", headers=alice).status_code == 204
    assert _store(settings).verify(two["sha256"]) == two["size_bytes"]
    assert client.delete(f"/v1/datasets/{two['id']}", headers=alice).status_code == 204
    assert not _store(settings).exists(two["sha256"])


@pytest.mark.parametrize("use", ["model", "train", "eval", "holdout"])
def test_an_object_a_queued_job_uses_cannot_be_deleted_and_409_names_the_job(
        client, alice, uploaded, use, settings):
    x, y = tiny_dataset(seed=1)
    other = upload_dataset(client, alice, x, y, name="other").json()["id"]
    body = {"eval": {"datasets": {"test": other}}} if use == "eval" else (
        {"step": {"holdout_dataset_id": other}} if use == "holdout" else {})
    job_id = _submit(client, alice, uploaded, **body)
    path = {"model": f"/v1/models/{uploaded.model_id}",
            "train": f"/v1/datasets/{uploaded.dataset_id}"}.get(use, f"/v1/datasets/{other}")

    problem = assert_problem(client.delete(path, headers=alice), 409)

    assert job_id in problem["detail"]
    assert client.get(path, headers=alice).status_code == 200
    assert _erasures(client, alice)["data"] == []
    client.post(f"/v1/jobs/{job_id}/cancel", headers=alice)
    assert client.delete(path, headers=alice).status_code == 204


def test_deleting_a_terminal_job_erases_its_request_and_events(
        client, alice, uploaded, session_factory):
    job_id = _submit(client, alice, uploaded)
    assert_problem(client.delete(f"/v1/jobs/{job_id}", headers=alice), 409)  # queued
    client.post(f"/v1/jobs/{job_id}/cancel", headers=alice)

    assert client.delete(f"/v1/jobs/{job_id}", headers=alice).status_code == 204

    assert_problem(client.get(f"/v1/jobs/{job_id}", headers=alice), 404)
    assert_problem(client.get(f"/v1/jobs/{job_id}/events", headers=alice), 404)
    assert_problem(client.get(f"/v1/jobs/{job_id}/report", headers=alice), 404)
    assert job_id not in [j["id"] for j in client.get("/v1/jobs", headers=alice).json()["data"]]
    with session_factory() as session:
        job = session.get(Job, job_id)
        assert job.request == {} and job.result is None and job.deleted_at is not None
        assert session.scalar(sa.select(sa.func.count()).select_from(JobEvent)
                              .where(JobEvent.job_id == job_id)) == 0
    [record] = _erasures(client, alice)["data"]
    assert (record["kind"], record["object_id"], record["job_id"]) == ("job", job_id, job_id)
    # The job's inputs were never touched.
    assert client.get(f"/v1/models/{uploaded.model_id}", headers=alice).status_code == 200


def test_the_report_of_a_job_whose_inputs_were_erased_says_so(client, alice, uploaded):
    job_id = _submit(client, alice, uploaded)
    client.post(f"/v1/jobs/{job_id}/cancel", headers=alice)
    before = client.get(f"/v1/jobs/{job_id}/report", headers=alice)
    assert 'id="erased"' not in before.text
    assert client.delete(f"/v1/datasets/{uploaded.dataset_id}", headers=alice).status_code == 204

    etag = before.headers["ETag"]
    after = client.get(f"/v1/jobs/{job_id}/report", headers={**alice, "If-None-Match": etag})

    assert after.status_code == 200  # the page changed: no stale 304
    assert 'id="erased"' in after.text and uploaded.dataset_id in after.text


def test_erasures_list_is_a_cursor_list_newest_first(client, alice):
    x, y = tiny_dataset()
    ids = [upload_dataset(client, alice, x, y + 0, name=f"d{i}").json()["id"] for i in range(3)]
    for dataset_id in ids:
        assert client.delete(f"/v1/datasets/{dataset_id}", headers=alice).status_code == 204
    first = _erasures(client, alice, limit=2)
    assert first["has_more"] and len(first["data"]) == 2
    rest = _erasures(client, alice, limit=2, after=first["data"][-1]["id"])
    assert not rest["has_more"]
    listed = [r["object_id"] for r in first["data"] + rest["data"]]
    assert sorted(listed) == sorted(ids) and listed[0] == ids[-1]


def test_retention_erases_old_jobs_and_unused_uploads_on_a_controlled_clock(
        client, alice, uploaded, settings, session_factory):
    x, y = tiny_dataset(seed=3)
    busy = upload_dataset(client, alice, x, y, name="busy").json()["id"]
    done = _submit(client, alice, uploaded)
    client.post(f"/v1/jobs/{done}/cancel", headers=alice)
    queued = _submit(client, alice, uploaded, eval={"datasets": {"test": busy}})
    limits = settings.model_copy(update={"retention_job_s": 3600.0,
                                         "retention_upload_s": 7200.0})
    store = _store(settings)

    assert sweep_retention(session_factory, store, limits).erased == []  # nothing old yet
    later = utcnow() + timedelta(hours=1, minutes=1)
    assert sweep_retention(session_factory, store, limits, now=later).erased == [("job", done)]
    much_later = utcnow() + timedelta(hours=3)
    report = sweep_retention(session_factory, store, limits, now=much_later)

    # The queued job's model, train set and evaluation set are in use: kept; nothing else is.
    assert report.erased == []
    client.post(f"/v1/jobs/{queued}/cancel", headers=alice)
    report = sweep_retention(session_factory, store, limits, now=much_later)
    assert ("job", queued) in report.erased
    assert {("model", uploaded.model_id), ("dataset", uploaded.dataset_id),
            ("dataset", busy)} <= set(report.erased)
    records = _erasures(client, alice)["data"]
    assert {r["reason"] for r in records} == {"retention"}
    assert {r["api_key_id"] for r in records} == {None}
    assert _files(settings) == []


def test_a_full_disk_is_507_and_leaves_nothing(tmp_path, make_key):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.db.migrate import upgrade
    from tests.service.conftest import bearer

    settings = Settings(data_dir=tmp_path / "full", runner="none",
                        min_free_bytes=2**62)  # more than any disk: every upload is refused
    upgrade(settings)
    from service.auth import create_key
    from service.db.session import engine_from_settings, make_session_factory, session_scope
    engine = engine_from_settings(settings)
    with session_scope(make_session_factory(engine)) as session:
        key = create_key(session, "carol")
    engine.dispose()
    x, y = tiny_dataset()
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        response = client.post("/v1/datasets", headers=bearer(key),
                               files={"file": ("d.npz", npz_bytes(x, y))}, data={"name": "d"})
        body = assert_problem(response, 507)
        assert body["type"].endswith("insufficient-storage")
    assert list((settings.artifacts_dir / "tmp").iterdir()) == []
    assert _files(settings) == []
    with make_session_factory(engine_from_settings(settings))() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Artifact)) == 0


def test_the_reference_count_decides_and_an_upload_racing_a_removal_is_told(
        settings, session_factory):
    """``release_content`` removes a file only without a live row; an upload whose file was
    removed between its write and its indexing is refused (ContentGone → 503), never indexed
    without its bytes."""
    from service.db.models import Owner
    from service.erasure import check_published, release_content
    from service.storage import ContentGone

    store = _store(settings)
    sha, size = store.put_bytes(b"shared bytes")
    with session_factory() as session:
        owner = Owner(name="dora")
        session.add(owner)
        session.flush()
        Artifact.record(session, owner_id=owner.id, sha256=sha, size_bytes=size,
                        kind="dataset", media_type="application/octet-stream")
        session.commit()
    assert not release_content(session_factory, store, sha) and store.exists(sha)
    with session_factory() as session:
        session.execute(sa.update(Artifact).values(erased_at=utcnow()))
        session.commit()
    assert release_content(session_factory, store, sha) and not store.exists(sha)
    with session_factory() as session, pytest.raises(ContentGone):
        check_published(session, store, sha)
