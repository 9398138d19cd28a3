"""Fixtures of the client tests: ONE real embedded ``gif-service serve`` for the whole module
set (starting a server costs seconds), and a small MLP trained on scikit-learn's digits, so
the edit jobs run against ``builtin:digits:train`` and finish in seconds."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits

from service.client import GifClient, Job, JobEvent, JobProgress, Model
from tests.live_server import LiveServer, gif_service_command, live_server, service_env

DIGITS_FEATURES = 64
HIDDEN = [32]
MODEL_SPEC = {
    "arch": "mlp",
    "arch_kwargs": {"in_features": DIGITS_FEATURES, "hidden": HIDDEN, "num_classes": 10},
    "input": {"scale": 1.0 / 16.0},  # digits pixels are 0..16
    "task": "classification",
    "name": "digits-mlp",
}


def train_digits_mlp(epochs: int = 150, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict of models.md's ``mlp`` (keys ``0.weight``, ``0.bias``, ``2.weight``, ...)
    trained full-batch on digits with the spec's preprocessing (x / 16, flattened)."""
    torch.manual_seed(seed)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    net = torch.nn.Sequential(
        torch.nn.Linear(DIGITS_FEATURES, HIDDEN[0]), torch.nn.ReLU(), torch.nn.Linear(HIDDEN[0], 10)
    )
    optimiser = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(epochs):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimiser.step()
    return {name: tensor.detach().contiguous() for name, tensor in net.state_dict().items()}


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    torch.set_num_threads(1)
    with live_server(tmp_path_factory.mktemp("gif-data")) as running:
        yield running


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("ckpt") / "digits-mlp.safetensors"
    save_file(train_digits_mlp(), str(path))
    return path


@pytest.fixture()
def client(server: LiveServer) -> GifClient:
    with GifClient(server.url, server.api_key, timeout=60.0) as gif:
        yield gif


@pytest.fixture(scope="session")
def model(server: LiveServer, checkpoint: Path) -> Model:
    """The uploaded digits MLP, shared by the job tests."""
    with GifClient(server.url, server.api_key, timeout=60.0) as gif:
        return gif.upload_model(checkpoint, MODEL_SPEC)


@pytest.fixture(scope="session")
def exploding_model(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Model:
    """The MLP with weights scaled by 1e30: finite (so the upload is accepted) but its outputs
    overflow, so a job on it fails at run time (``non_finite``), not at submission."""
    state = {name: tensor * 1e30 if name.endswith("weight") else tensor
             for name, tensor in train_digits_mlp(epochs=1).items()}
    path = tmp_path_factory.mktemp("ckpt") / "exploding.safetensors"
    save_file(state, str(path))
    with GifClient(server.url, server.api_key, timeout=60.0) as gif:
        return gif.upload_model(path, {**MODEL_SPEC, "name": "exploding"})


@dataclass
class FinishedJob:
    """The shared edit job, as observed live by whichever test needed it first."""

    key: str  # its Idempotency-Key
    body: dict
    job: Job  # terminal
    progress: list[JobProgress] = field(default_factory=list)  # each new value while waiting
    streamed: list[JobEvent] = field(default_factory=list)  # the SSE stream, read concurrently
    # ``gif-service jobs submit --idempotency-key <key> --wait``, run at the same time
    cli: subprocess.CompletedProcess | None = None


@pytest.fixture(scope="session")
def finished_job(server: LiveServer, model: Model,
                 tmp_path_factory: pytest.TempPathFactory) -> FinishedJob:
    """One edit job for the whole session (each job costs the runner a fresh process), watched
    live three ways at once: the client waits with a progress callback, a thread reads the SSE
    stream, and the installed ``gif-service`` script submits the same body with the same key
    (so it gets the same job) and waits with its progress bar."""
    key, body = str(uuid.uuid4()), edit_body(model.id)
    body_path = tmp_path_factory.mktemp("job") / "job.json"
    body_path.write_text(json.dumps(body))
    # The CLI submits first and the client joins with the same key once the CLI has said
    # "submitted": a warm runner finishes this job in seconds, faster than a fresh Python
    # process starts, so a CLI started second could see only the job's last phase.
    cli = subprocess.Popen(
        [*gif_service_command(), "jobs", "submit", str(body_path), "--idempotency-key", key,
         "--wait", "--poll-interval", "0.05"],
        env=cli_env(server), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    stderr_chunks: list[str] = []
    submitted = threading.Event()

    def drain_stderr() -> None:
        assert cli.stderr is not None
        # os.read returns whatever is there (a buffered read would wait for a full chunk).
        for chunk in iter(lambda: os.read(cli.stderr.fileno(), 4096), b""):
            stderr_chunks.append(chunk.decode(errors="replace"))
            if "submitted " in "".join(stderr_chunks[-8:]):
                submitted.set()
        submitted.set()  # the CLI ended: do not wait for it any longer

    drainer = threading.Thread(target=drain_stderr, daemon=True)
    drainer.start()
    assert submitted.wait(timeout=120), "the CLI never submitted the job"
    with GifClient(server.url, server.api_key, timeout=60.0) as gif:
        job = gif.submit_job(body, idempotency_key=key)
        record = FinishedJob(key, body, job)

        def stream() -> None:
            with GifClient(server.url, server.api_key, timeout=60.0) as streamer:
                record.streamed.extend(streamer.stream_events(job.id))

        reader = threading.Thread(target=stream, daemon=True)
        reader.start()
        record.job = gif.wait_for_job(job.id, on_progress=record.progress.append,
                                      poll_interval=0.02, timeout=240)
        stdout = cli.stdout.read().decode() if cli.stdout is not None else ""
        cli.wait(timeout=120)
        drainer.join(timeout=60)
        record.cli = subprocess.CompletedProcess(cli.args, cli.returncode, stdout,
                                                 "".join(stderr_chunks))
        reader.join(timeout=60)
    assert record.job.status == "succeeded", record.job.error
    return record


def cli_env(server: LiveServer) -> dict[str, str]:
    """The environment of a ``gif-service`` client command talking to ``server``."""
    return {**service_env(server.data_dir), "GIF_URL": server.url, "GIF_API_KEY": server.api_key}


def edit_body(model_id: str, **overrides) -> dict:
    """A small, quick ``remove_class`` job on digits (api.md body)."""
    body = {
        "model_id": model_id,
        "train_dataset_id": "builtin:digits:train",
        "edit": {"kind": "remove_class", "class": 8},
        "selection": {"criterion": "topk_outputs", "ratio": 0.5},
        # A solve of several seconds even on an idle machine (all retained points in H, micro-
        # batches of 16, all 200 iterations: no stagnation or condition stop), so the progress
        # throttled to ~2 writes/s reports many counts: at batches of 64 it took ~2 s, and a
        # client polling a loaded server in CI saw only one of its counts.
        "solver": {"algorithm": "lsqr", "max_iter": 200, "tol": 1e-12,
                   "stagnation_window": 0, "conlim": 0,
                   "hessian_samples": None, "edit_samples": 128, "batch_size": 16},
        "step": {"mode": "fixed", "scale": 1.0},
        "eval": {"datasets": {"test": "builtin:digits:test"}},
        "device": "cpu",
        "seed": 0,
    }
    body.update(overrides)
    return body
