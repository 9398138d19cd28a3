"""The sync client against a real embedded server: models, datasets, jobs, events, errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from service.client import (
    AuthenticationError,
    GifClient,
    GifConnectionError,
    IntegrityError,
    Model,
    NotFoundError,
    ValidationError,
    WaitTimeoutError,
)
from tests.client.conftest import MODEL_SPEC, FinishedJob, edit_body
from tests.live_server import LiveServer, free_port

PHASE_ORDER = ["load", "select", "solve", "step_search", "evaluate", "save"]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_upload_list_show_download_round_trip(client: GifClient, checkpoint: Path,
                                              tmp_path: Path):
    uploaded = client.upload_model(checkpoint, {**MODEL_SPEC, "name": "round-trip"})

    assert uploaded.id.startswith("mdl_")
    assert uploaded.name == "round-trip"
    assert uploaded.arch == "mlp"
    expected_params = sum(t.numel() for t in load_file(str(checkpoint)).values())
    assert uploaded.num_parameters == expected_params
    assert uploaded.id in [m.id for m in client.list_models()]
    assert client.get_model(uploaded.id) == uploaded

    path = client.download_model(uploaded.id, tmp_path)

    assert path == tmp_path / f"{uploaded.id}.safetensors"
    assert sha256_of(path) == uploaded.sha256
    original, downloaded = load_file(str(checkpoint)), load_file(str(path))
    assert downloaded.keys() == original.keys()
    for name, tensor in original.items():
        assert torch.equal(downloaded[name], tensor), name


def test_list_models_follows_the_cursor_over_pages(client: GifClient, checkpoint: Path):
    created = [client.upload_model(checkpoint, {**MODEL_SPEC, "name": f"page-{i}"})
               for i in range(3)]

    listed = [m.id for m in client.list_models(page_size=1)]

    assert len(listed) == len(set(listed)), "a page boundary repeated a model"
    positions = [listed.index(m.id) for m in created]
    assert positions == sorted(positions, reverse=True), "not newest first"


def test_upload_show_and_list_a_dataset(client: GifClient, tmp_path: Path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 17, size=(30, 1, 8, 8), dtype=np.uint8)
    y = np.repeat(np.arange(3), 10)
    path = tmp_path / "tiny.npz"
    np.savez(path, x=x, y=y)

    dataset = client.upload_dataset(path, "tiny")

    assert dataset.id.startswith("ds_") and dataset.name == "tiny"
    assert dataset.num_samples == 30 and dataset.sample_shape == [1, 8, 8]
    assert dataset.sha256 == sha256_of(path)
    assert client.get_dataset(dataset.id) == dataset
    assert dataset.id in [d.id for d in client.list_datasets(page_size=1)]


def test_architectures_list_their_arguments(client: GifClient):
    architectures = {arch.name: arch for arch in client.list_architectures()}

    assert {"linear", "mlp", "tinynet", "resnet18", "vgg11"} <= set(architectures)
    mlp_arguments = {a.name: a for a in architectures["mlp"].arguments}
    assert set(mlp_arguments) == {"in_features", "hidden", "num_classes"}
    assert all(a.required for a in mlp_arguments.values())


def test_download_with_a_wrong_sha_raises_and_leaves_nothing(client: GifClient, model: Model,
                                                            tmp_path: Path):
    dest = tmp_path / "model.safetensors"

    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        client.download_model(model.id, dest, expected_sha256="0" * 64)

    assert list(tmp_path.iterdir()) == []


def test_delete_model_then_it_is_gone(client: GifClient, checkpoint: Path):
    doomed = client.upload_model(checkpoint, {**MODEL_SPEC, "name": "doomed"})

    client.delete_model(doomed.id)

    with pytest.raises(NotFoundError):
        client.get_model(doomed.id)


def test_not_found_surfaces_the_problem_body(client: GifClient):
    with pytest.raises(NotFoundError) as caught:
        client.get_job("job_doesnotexist")

    error = caught.value
    assert error.status == 404
    assert error.title
    assert "job_doesnotexist" in (error.detail or "")


def test_invalid_job_is_a_422_naming_the_field(client: GifClient, model: Model):
    body = edit_body(model.id, edit={"kind": "remove_class", "class": 99})

    with pytest.raises(ValidationError) as caught:
        client.submit_job(body)

    error = caught.value
    assert error.status == 422
    assert any("class" in [str(part) for part in err["loc"]] for err in error.errors), error.errors


def test_spec_that_does_not_fit_the_checkpoint_is_a_422(client: GifClient, checkpoint: Path):
    wrong = {**MODEL_SPEC, "arch_kwargs": {**MODEL_SPEC["arch_kwargs"], "hidden": [7]}}

    with pytest.raises(ValidationError) as caught:
        client.upload_model(checkpoint, wrong)

    assert caught.value.status == 422
    assert "0.weight" in str(caught.value)


def test_wrong_api_key_is_an_authentication_error(server: LiveServer):
    with GifClient(server.url, "not-a-key") as stranger, pytest.raises(AuthenticationError) as e:
        stranger.list_models()
    assert e.value.status == 401


def test_unreachable_server_is_a_connection_error_after_retries():
    with GifClient(f"http://127.0.0.1:{free_port()}", "key", max_retries=1) as nowhere, \
            pytest.raises(GifConnectionError, match="cannot reach"):
        nowhere.list_models()


def test_key_and_url_come_from_the_environment_and_the_key_file(server: LiveServer,
                                                                monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("GIF_API_KEY", raising=False)
    monkeypatch.setenv("GIF_URL", server.url)
    monkeypatch.setenv("GIF_DATA_DIR", str(server.data_dir))  # where serve wrote its api_key

    with GifClient() as configured:
        assert configured.url == server.url
        assert any(d.id == "builtin:digits:train" for d in configured.list_datasets())


def test_submit_with_the_same_idempotency_key_returns_the_same_job(client: GifClient,
                                                                   finished_job: FinishedJob):
    again = client.submit_job(finished_job.body, idempotency_key=finished_job.key)
    other = client.submit_job(finished_job.body)  # a fresh key by default: a new job
    client.cancel_job(other.id)  # only its id matters here

    assert again.id == finished_job.job.id
    assert again.status == "succeeded"
    assert other.id != finished_job.job.id
    with pytest.raises(ValidationError):  # the same key with another body
        client.submit_job({**finished_job.body, "seed": 1}, idempotency_key=finished_job.key)


def test_wait_reports_advancing_progress_and_returns_the_result(client: GifClient,
                                                               finished_job: FinishedJob):
    done, seen = finished_job.job, finished_job.progress

    assert len(seen) >= 2
    assert all(a != b for a, b in zip(seen, seen[1:], strict=False)), "a repeat was reported"
    phases = [p.phase for p in seen]
    ranks = [PHASE_ORDER.index(p) for p in phases if p in PHASE_ORDER]
    assert ranks == sorted(ranks), f"phases went backwards: {phases}"
    # Polling sees the long phases; a short one (load) may pass between two polls, so the
    # job's events, which record every phase, are what shows it ran.
    assert {"solve", "save"} <= set(phases)
    event_phases = {event.phase for event in client.list_events(done.id)}
    assert {"load", "select", "solve", "evaluate", "save"} <= event_phases
    solve_iterations = [p.iteration for p in seen if p.phase == "solve" and p.iteration]
    assert len(set(solve_iterations)) >= 2, f"the solve's iteration never advanced: {seen}"
    assert solve_iterations == sorted(solve_iterations)
    assert all(p.max_iter == 200 for p in seen if p.phase == "solve" and p.iteration)
    assert seen[-1] == done.progress

    edited = client.get_model(done.result.edited_model_id)
    assert edited.source_job_id == done.id
    assert edited.num_parameters == client.get_model(finished_job.body["model_id"]).num_parameters
    metrics, in_job = client.get_metrics(done.id), done.result.metrics
    assert metrics.set_names() == in_job.set_names()
    assert {"test", "forget", "retain"} <= set(metrics.set_names())
    for name in metrics.set_names():
        assert metrics.before[name] == in_job.before[name], name
        assert metrics.after[name] == in_job.after[name], name
    # The endpoint and the job result have one shape: scalars at each stage's top level.
    assert metrics.before == in_job.before and metrics.after == in_job.after
    assert metrics.score("after") == in_job.score("after") is not None


def test_stream_events_yields_every_event_once_and_ends_with_the_job(client: GifClient,
                                                                      finished_job: FinishedJob):
    live = finished_job.streamed  # read while the job ran
    replayed = list(client.stream_events(finished_job.job.id))  # after it ended

    stored = [event.seq for event in client.list_events(finished_job.job.id)]
    assert [event.seq for event in live] == stored
    assert [event.seq for event in replayed] == stored
    assert stored == sorted(set(stored)) and stored
    assert {"load", "solve", "save"} <= {event.phase for event in live}


def test_cancel_stops_a_job_and_is_idempotent(client: GifClient, model: Model):
    long_solver = {"algorithm": "lsqr", "max_iter": 10_000, "tol": 1e-12,
                   "hessian_samples": None, "edit_samples": None}
    job = client.submit_job(edit_body(model.id, solver=long_solver))

    cancelled = client.cancel_job(job.id)
    done = client.wait_for_job(job.id, timeout=120)
    again = client.cancel_job(job.id)

    assert cancelled.id == job.id
    assert done.status == "cancelled"
    assert again.status == "cancelled"
    assert again.result is None
    assert job.id in [j.id for j in client.list_jobs(status="cancelled")]
    assert job.id not in [j.id for j in client.list_jobs(status="succeeded")]


def test_wait_for_job_gives_up_after_its_timeout(client: GifClient, model: Model):
    long_solver = {"algorithm": "lsqr", "max_iter": 10_000, "tol": 1e-12,
                   "hessian_samples": None, "edit_samples": None}
    job = client.submit_job(edit_body(model.id, solver=long_solver))
    try:
        with pytest.raises(WaitTimeoutError) as caught:
            client.wait_for_job(job.id, poll_interval=0.05, timeout=0.3)
        assert caught.value.job.id == job.id
        assert not caught.value.job.is_terminal
    finally:
        client.cancel_job(job.id)
