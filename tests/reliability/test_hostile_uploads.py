"""Hostile uploads through a live embedded server (2 MiB upload cap): each is refused with a
precise 4xx problem, executes nothing, leaves no file in the artifact store or its staging
directory, and keeps the server's memory bounded (peak RSS, read from /proc).

helper D's in-process tests (tests/service/) cover some of these against the app object; here
the real ``gif-service serve`` process receives the bytes over HTTP."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.reliability.conftest import UPLOAD_CAP
from tests.reliability.helpers import files_under, server_cost
from tests.worker import digits

PROBLEM = "application/problem+json"
MEMORY_BUDGET_BYTES = 200 * 1024**2  # the refusals below must not inflate anything


class RunsCode:
    """Unpickling this runs ``touch <marker>``: a checkpoint that attacks ``torch.load``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _post_model(client, data: bytes, filename: str = "model.safetensors", spec=None):
    return client.post(
        "/v1/models",
        files={"file": (filename, data, "application/octet-stream")},
        data={"spec": json.dumps(spec or digits.MLP_SPEC)},
    )


def _post_dataset(client, data: bytes, filename: str = "train.npz"):
    return client.post(
        "/v1/datasets",
        files={"file": (filename, data, "application/octet-stream")},
        data={"name": "hostile"},
    )


def _safetensors_with_header(header: dict, payload: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _zip_bomb_npz(inflated_bytes: int = 512 * 1024**2) -> bytes:
    """An .npz whose ``x`` member inflates to ``inflated_bytes`` of zeros (~1000× its size)."""
    buffer = io.BytesIO()
    count = inflated_bytes // 4
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (count // 64, 64)}
    )
    chunk = bytes(4 * 1024 * 1024)
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            for _ in range(inflated_bytes // len(chunk)):
                member.write(chunk)
        labels = io.BytesIO()
        np.save(labels, np.zeros(count // 64, dtype=np.int64)[:10])
        archive.writestr("y.npy", labels.getvalue())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def good_weights(upload_files) -> bytes:
    return upload_files.model.read_bytes()


def _cases(good: bytes, state: dict, marker: Path) -> list[tuple[str, str, bytes, str, int, str]]:
    """(name, route, bytes, filename, expected status, a word the problem detail contains)."""
    x, y = digits.digits_arrays(200)
    pickled = io.BytesIO()
    torch.save({"0.weight": RunsCode(marker)}, pickled)
    raw_pickle = pickle.dumps(RunsCode(marker))
    corrupted = bytearray(good)
    corrupted[8:40] = b"\xff" * 32  # inside the JSON header
    huge = _safetensors_with_header(
        {"0.weight": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 4 << 40]}},
        b"\0" * 64,
    )
    nan_weights = {k: v.clone() for k, v in state.items()}
    nan_weights["0.weight"][0, 0] = float("nan")
    inf_weights = {k: v.clone() for k, v in state.items()}
    inf_weights["2.bias"][0] = float("inf")
    int_weights = {k: (v * 100).to(torch.int32) for k, v in state.items()}
    nan_data = x.copy()
    nan_data[3, 5] = np.nan
    return [
        ("torch pickle running code", "models", pickled.getvalue(), "m.pt", 422, ""),
        ("raw pickle running code", "models", raw_pickle, "m.pkl", 422, ""),
        ("truncated safetensors", "models", good[: len(good) // 2], "m.safetensors", 422, ""),
        ("corrupted safetensors header", "models", bytes(corrupted), "m.safetensors", 422, ""),
        ("header claiming huge tensors", "models", huge, "m.safetensors", 422, ""),
        ("NaN weights", "models", digits.safetensors_bytes(nan_weights), "m.safetensors", 422,
         "NaN"),
        ("Inf weights", "models", digits.safetensors_bytes(inf_weights), "m.safetensors", 422,
         "Inf"),
        ("integer weights", "models", digits.safetensors_bytes(int_weights), "m.safetensors",
         422, ""),
        ("past the size cap", "models", good + bytes(UPLOAD_CAP), "m.safetensors", 413, ""),
        ("zip bomb npz", "datasets", _zip_bomb_npz(), "bomb.npz", 422, ""),
        ("object array npz", "datasets", _npz(x=np.array([{"a": 1}] * 4, dtype=object),
                                             y=np.zeros(4, dtype=np.int64)), "o.npz", 422,
         "object"),
        ("NaN data", "datasets", _npz(x=nan_data, y=y), "nan.npz", 422, ""),
        ("float labels", "datasets", _npz(x=x, y=y.astype(np.float32) + 0.5), "f.npz", 422, ""),
        ("string samples", "datasets", _npz(x=np.array(["a"] * len(y)), y=y), "s.npz", 422, ""),
        ("dataset past the size cap", "datasets", bytes(UPLOAD_CAP + 1024), "big.npz", 413, ""),
    ]


def test_each_hostile_upload_is_a_precise_4xx_leaving_nothing(
    embedded, upload_files, good_weights, tmp_path
):
    client = embedded.client()
    marker = tmp_path / "pwned"
    artifacts = embedded.data_dir / "artifacts"
    # Warm the upload path with one good upload so the peak below measures only the attacks.
    assert _post_model(client, good_weights).status_code == 201
    before = files_under(artifacts)
    models_before = client.get("/v1/models", params={"limit": 100}).json()["data"]

    failures = []
    cases = _cases(good_weights, upload_files.state_dict, marker)
    with server_cost(embedded) as cost:
        for name, route, data, filename, status, word in cases:
            post = _post_model if route == "models" else _post_dataset
            response = post(client, data, filename)
            body = response.json() if response.headers.get("content-type", "").startswith(
                PROBLEM
            ) else {}
            if (
                response.status_code != status
                or body.get("status") != status
                or word not in body.get("detail", "") + json.dumps(body.get("errors", []))
            ):
                failures.append(f"{name}: {response.status_code} {response.text[:300]}")
    print(f"{len(cases)} hostile uploads: {cost}")
    assert not failures, "\n".join(failures)

    assert not marker.exists(), "a pickle in an upload ran code"
    assert files_under(artifacts) == before, "a refused upload left a file behind"
    assert client.get("/v1/models", params={"limit": 100}).json()["data"] == models_before
    assert cost.rss_growth < MEMORY_BUDGET_BYTES, str(cost)


def test_path_traversal_filename_is_only_a_label(embedded, good_weights):
    """The client's filename never becomes a path: the upload is stored by content hash, and
    nothing appears where the name points."""
    client = embedded.client()
    target = embedded.data_dir.parent / "escaped.safetensors"
    evil = "../../" + target.name
    response = _post_model(client, good_weights, filename=evil)
    assert response.status_code == 201, response.text
    sha = response.json()["sha256"]
    assert not target.exists()
    stored = [p for p in files_under(embedded.data_dir) if "escaped" in p.name]
    assert stored == []
    assert any(p.name.startswith(sha) or sha in str(p) for p in files_under(embedded.data_dir))
    # The download's Content-Disposition does not carry the traversal either.
    download = client.get(f"/v1/models/{response.json()['id']}/content")
    assert download.status_code == 200 and ".." not in download.headers["content-disposition"]
