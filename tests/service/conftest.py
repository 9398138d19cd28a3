"""Fixtures for the route tests: a migrated SQLite database in ``tmp_path``, the app with
runner ``none`` (jobs stay queued), API keys for two owners, and helpers that upload real
models (built with ``gif.registry.build_model``) and datasets."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save as save_safetensors

from service.app import create_app
from service.auth import create_key
from service.db.migrate import upgrade
from service.db.session import engine_from_settings, make_session_factory, session_scope
from service.settings import Settings

TINY_MLP_SPEC = {
    "arch": "mlp",
    "arch_kwargs": {"in_features": 4, "hidden": [3], "num_classes": 3},
    "name": "tiny-mlp",
}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def settings(tmp_path) -> Settings:
    settings = Settings(data_dir=tmp_path / "data", runner="none", max_upload_bytes=64 * 1024)
    upgrade(settings)
    return settings


@pytest.fixture
def session_factory(settings):
    engine = engine_from_settings(settings)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def make_key(session_factory):
    def make(owner: str) -> str:
        with session_scope(session_factory) as session:
            return create_key(session, owner)

    return make


@pytest.fixture
def app(settings):
    return create_app(settings)


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def alice(make_key) -> dict[str, str]:
    return bearer(make_key("alice"))


@pytest.fixture
def bob(make_key) -> dict[str, str]:
    return bearer(make_key("bob"))


def tiny_state_dict(spec: dict = TINY_MLP_SPEC) -> dict[str, torch.Tensor]:
    from gif.registry import build_model
    from gif.spec import ModelSpec

    return build_model(ModelSpec.model_validate(spec)).state_dict()


def torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def safetensors_bytes(state_dict: dict[str, torch.Tensor]) -> bytes:
    return save_safetensors({k: v.contiguous() for k, v in state_dict.items()})


def npz_bytes(x: np.ndarray, y: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y)
    return buffer.getvalue()


def upload_model(client, headers, spec=TINY_MLP_SPEC, content: bytes | None = None):
    content = content if content is not None else safetensors_bytes(tiny_state_dict(spec))
    return client.post(
        "/v1/models",
        headers=headers,
        files={"file": ("model.safetensors", content, "application/octet-stream")},
        data={"spec": json.dumps(spec)},
    )


def upload_dataset(client, headers, x: np.ndarray, y: np.ndarray, name: str = "train"):
    return client.post(
        "/v1/datasets",
        headers=headers,
        files={"file": ("data.npz", npz_bytes(x, y), "application/octet-stream")},
        data={"name": name},
    )


def tiny_dataset(n: int = 30, features: int = 4, classes: int = 3, seed: int = 0):
    """``n`` float32 samples of ``features`` features, labels cycling through ``classes``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    y = (np.arange(n) % classes).astype(np.int64)
    return x, y


@dataclass
class Uploaded:
    model_id: str
    dataset_id: str


@pytest.fixture
def uploaded(client, alice) -> Uploaded:
    """Alice's tiny MLP and a 30-point, 3-class dataset that fits it."""
    model = upload_model(client, alice)
    assert model.status_code == 201, model.text
    x, y = tiny_dataset()
    dataset = upload_dataset(client, alice, x, y)
    assert dataset.status_code == 201, dataset.text
    return Uploaded(model_id=model.json()["id"], dataset_id=dataset.json()["id"])


def assert_problem(response, status: int, *, loc: list | None = None) -> dict:
    """The response is an RFC 9457 problem with ``status`` (and an error at ``loc``)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert body["type"] and body["title"] and body["detail"]
    assert "Traceback" not in response.text
    if loc is not None:
        locs = [e["loc"] for e in body.get("errors", [])]
        assert loc in locs, f"{loc} not in {locs}"
    return body
