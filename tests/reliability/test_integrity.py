"""Integrity of stored artifacts through a live embedded server: files are re-hashed against
their sha256 whenever they are read. A model file with flipped bytes on disk is never served
(a problem response instead of the bad weights), and a job whose model or dataset file was
corrupted fails with a clear error code instead of editing bad weights."""

from __future__ import annotations

import numpy as np

from tests.reliability.helpers import submit, upload_dataset, upload_model, wait_job
from tests.worker import digits


def _flip_bytes(path, offset: int = -16, count: int = 4) -> None:
    data = bytearray(path.read_bytes())
    for i in range(count):
        data[offset + i] ^= 0xFF
    path.write_bytes(bytes(data))


def _artifact_path(server, sha256: str):
    path = server.data_dir / "artifacts" / sha256[:2] / sha256
    assert path.is_file(), f"no artifact file at {path}"
    return path


def _unique_model(tmp_path, state: dict, factor: float):
    """Weights no other test uploads (the store is content-addressed and shared)."""
    path = tmp_path / f"model-{factor}.safetensors"
    path.write_bytes(digits.safetensors_bytes({k: v * factor for k, v in state.items()}))
    return path


def test_a_corrupted_model_file_is_never_served_nor_edited(embedded, upload_files, tmp_path):
    client = embedded.client()
    model = upload_model(client, _unique_model(tmp_path, upload_files.state_dict, 1.001))
    dataset = upload_dataset(client, upload_files.data)
    good = client.get(f"/v1/models/{model['id']}/content")
    assert good.status_code == 200 and len(good.content) == model["size_bytes"]

    _flip_bytes(_artifact_path(embedded, model["sha256"]))

    for headers in ({}, {"Range": "bytes=0-99"}):
        response = client.get(f"/v1/models/{model['id']}/content", headers=headers)
        assert response.status_code >= 500 and response.status_code != 503, response.status_code
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "integrity" in response.json()["detail"]
        assert good.content[-64:] not in response.content
    job = submit(client, model["id"], dataset["id"], digits.quick_request(
        {"kind": "remove_class", "class": 6}))
    failed = wait_job(embedded, client, job["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "invalid_checkpoint"
    assert "unusable" in failed["error"]["message"] and failed["edited_model_id"] is None
    assert "integrity" in embedded.logs() or "corrupt" in embedded.logs()


def test_a_corrupted_dataset_file_fails_the_job(embedded, upload_files, tmp_path):
    client = embedded.client()
    model = upload_model(client, _unique_model(tmp_path, upload_files.state_dict, 0.999))
    x, y = digits.digits_arrays(300, seed=7)
    path = tmp_path / "own.npz"
    path.write_bytes(digits.npz_bytes(x + np.float32(0.5), y))
    dataset = upload_dataset(client, path, name="to-corrupt")

    _flip_bytes(_artifact_path(embedded, dataset["sha256"]), offset=200)

    job = submit(client, model["id"], dataset["id"], digits.quick_request(
        {"kind": "remove_class", "class": 1}))
    failed = wait_job(embedded, client, job["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "invalid_dataset"
    assert dataset["id"] in failed["error"]["message"]
    assert failed["result"] is None and failed["edited_model_id"] is None
