"""A tiny model and dataset for worker and integration tests: scikit-learn's digits (8×8 grey
images, 10 classes, shipped with the package) and an ``mlp`` (models.md) trained on them in a
second, so edits run in seconds on a loaded 2-core machine."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

NUM_CLASSES = 10
HIDDEN = 24
# The spec uploaded with the checkpoint: raw pixel values 0..16 are scaled to 0..1.
MLP_SPEC = {
    "arch": "mlp",
    "arch_kwargs": {"in_features": 64, "hidden": [HIDDEN], "num_classes": NUM_CLASSES},
    "input": {"scale": 1.0 / 16.0},
    "task": "classification",
    "name": "digits-mlp",
}


def digits_arrays(num_samples: int = 900, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded subset of digits: ``x`` float32 N×64 (raw 0..16), ``y`` int64 N."""
    bunch = load_digits()
    order = np.random.default_rng(seed).permutation(len(bunch.target))[:num_samples]
    return bunch.data[order].astype(np.float32), bunch.target[order].astype(np.int64)


def mlp_module() -> nn.Module:
    """The ``mlp`` of models.md, written with plain PyTorch (keys ``0.*``, ``2.*``)."""
    return nn.Sequential(nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, NUM_CLASSES))


def train_mlp(x: np.ndarray, y: np.ndarray, steps: int = 150, seed: int = 0) -> dict:
    """Train the mlp full-batch with Adam; returns its state dict (CPU, float32)."""
    torch.manual_seed(seed)
    model = mlp_module()
    inputs = torch.from_numpy(x) / 16.0
    labels = torch.from_numpy(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def accuracy(state_dict: dict, x: np.ndarray, y: np.ndarray) -> float:
    model = mlp_module()
    model.load_state_dict(state_dict, strict=True)
    with torch.no_grad():
        predictions = model(torch.from_numpy(x) / 16.0).argmax(dim=1).numpy()
    return float((predictions == y).mean())


def safetensors_bytes(state_dict: dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in state_dict.items()})


def npz_bytes(x: np.ndarray, y: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y)
    return buffer.getvalue()


def write_files(
    directory: Path, state_dict: dict, x: np.ndarray, y: np.ndarray
) -> tuple[Path, Path]:
    """``model.safetensors`` and ``train.npz`` in ``directory`` (what a client uploads)."""
    directory.mkdir(parents=True, exist_ok=True)
    model_path = directory / "model.safetensors"
    data_path = directory / "train.npz"
    model_path.write_bytes(safetensors_bytes(state_dict))
    data_path.write_bytes(npz_bytes(x, y))
    return model_path, data_path


def quick_request(edit: dict, **overrides) -> dict:
    """An edit request sized for tests: small Hessian/edit samples, few iterations."""
    request = {
        "edit": edit,
        "method": "gif",
        "selection": {"criterion": "topk_outputs", "ratio": 0.2},
        "solver": {
            "algorithm": "lsqr",
            "max_iter": 25,
            "tol": 1e-3,
            "damping": 0.01,
            "hessian_samples": 256,
            "edit_samples": 128,
            "batch_size": 256,
        },
        "step": {"mode": "auto", "validation_fraction": 0.1},
        "eval": {"datasets": {}, "mia": False, "retain_samples": 256},
        "device": "cpu",
        "seed": 0,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(request.get(key), dict):
            request[key] = {**request[key], **value}
        else:
            request[key] = value
    return request


def long_request(edit: dict) -> dict:
    """A request that keeps solving for a long time (many iterations, a tolerance LSQR cannot
    reach in float32, every training point in the Hessian, in micro-batches of 16): for cancel,
    time-limit and worker-loss tests. With 512 Hessian points a quiet machine ran all 10,000
    iterations inside test_local_runner's 20 s limit, and with all 900 in batches of 256 a
    faster one did too (19 s: the job succeeded); batches of 16 make each HVP about 9 times
    dearer (1.1 → 9 ms on that machine), so the solve takes minutes, not seconds."""
    return quick_request(
        edit,
        solver={"max_iter": 10_000, "tol": 1e-12, "damping": 0.0, "hessian_samples": None,
                "batch_size": 16},
        step={"mode": "fixed", "scale": 1.0},
    )
