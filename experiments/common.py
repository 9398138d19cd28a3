"""Shared parts of the reproduction experiments: data subsets, the paper's backdoor, seeded
training with an on-disk cache, the edit call (always ``gif.edit.run_edit``, the path the
service uses), evaluation of the retraining reference, and the table / JSON writers.

Nothing here tunes on an evaluation set: the edit's step scale is chosen by ``run_edit`` on a
validation split of the training data it is given (method.md E9); evaluation sets are only
evaluated.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gif.data import ArrayDataset, load_builtin, prepare_inputs
from gif.edit import EditHooks, LoadedModel, run_edit
from gif.metrics import evaluate
from gif.registry import build_model, get_architecture
from gif.request import EditRequest
from gif.spec import InputSpec, ModelSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO_ROOT / ".cache" / "experiments"
DEFAULT_OUT = REPO_ROOT / "docs" / "results"

# Fashion-MNIST's pixel mean and std on the 0..1 scale (the training set's), as in api.md's example.
FASHION_INPUT = InputSpec(scale=1.0 / 255.0, mean=[0.2860], std=[0.3530])
EVAL_BATCH = 256


# ----------------------------------------------------------------------------- data


def fashion_mnist(split: str, *, image_size: int = 28) -> ArrayDataset:
    """The built-in ``builtin:fashion-mnist:<split>``, optionally average-pooled to a smaller
    square (28 → 14 keeps the classes apart and makes ResNet-18 four times cheaper on this CPU)
    or zero-padded to 32×32 (the CIFAR-style VGG-11 input). Pixels stay uint8 0..255."""
    dataset = load_builtin(f"builtin:fashion-mnist:{split}")
    return ArrayDataset(
        x=resize_uint8(dataset.x, image_size), y=dataset.y, name=f"fashion-mnist-{split}"
    )


def resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """N×1×28×28 uint8 → N×1×size×size uint8: 2×2-style area pooling down, zero padding up."""
    current = x.shape[-1]
    if size == current:
        return x
    if size > current:
        pad = size - current
        return F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    pooled = F.adaptive_avg_pool2d(x.float(), size)
    return pooled.round().clamp(0, 255).to(torch.uint8)


def stratified_indices(y: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """``per_class`` seeded indices of every label (all of a label if it has fewer), sorted."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in torch.unique(y).tolist():
        members = torch.nonzero(y == label).flatten()
        order = torch.randperm(len(members), generator=generator)
        chosen.append(members[order[:per_class]])
    return torch.sort(torch.cat(chosen)).values


def subset(dataset: ArrayDataset, indices: torch.Tensor, name: str) -> ArrayDataset:
    return ArrayDataset(x=dataset.x[indices], y=dataset.y[indices], name=name)


def split_by_class(dataset: ArrayDataset, label: int) -> tuple[ArrayDataset, ArrayDataset]:
    """(the points of every other class, the points of ``label``)."""
    is_label = dataset.y == label
    return (
        subset(dataset, torch.nonzero(~is_label).flatten(), f"{dataset.name}-without-{label}"),
        subset(dataset, torch.nonzero(is_label).flatten(), f"{dataset.name}-class-{label}"),
    )


def checkerboard_trigger(x: torch.Tensor, amount: int = 16) -> torch.Tensor:
    """models.md's backdoor trigger on raw uint8 pixels: ``+amount`` on every pixel whose row
    and column have different parity, clipped at 255."""
    rows = torch.arange(x.shape[-2])[:, None]
    cols = torch.arange(x.shape[-1])[None, :]
    mask = ((rows + cols) % 2 == 1).to(torch.int16) * amount
    return (x.to(torch.int16) + mask).clamp(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class Poisoned:
    """A backdoored training set: ``dataset`` holds the triggered, relabelled copy;
    ``indices`` are the poisoned points and ``true_labels`` their real classes."""

    dataset: ArrayDataset
    indices: torch.Tensor
    true_labels: torch.Tensor


def poison(
    dataset: ArrayDataset, *, fraction: float = 0.1, target: int = 4, seed: int = 0
) -> Poisoned:
    """models.md: a seeded ``fraction`` of the images get the checkerboard and label ``target``."""
    generator = torch.Generator().manual_seed(seed)
    count = int(round(fraction * len(dataset.y)))
    indices = torch.sort(torch.randperm(len(dataset.y), generator=generator)[:count]).values
    x, y = dataset.x.clone(), dataset.y.clone()
    x[indices] = checkerboard_trigger(x[indices])
    true_labels = y[indices].clone()
    y[indices] = target
    return Poisoned(ArrayDataset(x=x, y=y, name=f"{dataset.name}-poisoned"), indices, true_labels)


def triggered_test_sets(test: ArrayDataset, target: int = 4) -> dict[str, ArrayDataset]:
    """The backdoor's evaluation sets built from the test split, all images whose class is
    not ``target`` with the trigger added: labelled ``target`` (so accuracy = attack success
    rate) and labelled with their true classes (accuracy on triggered points)."""
    keep = torch.nonzero(test.y != target).flatten()
    triggered = checkerboard_trigger(test.x[keep])
    as_target = torch.full_like(test.y[keep], target)
    return {
        "triggered_as_target": ArrayDataset(x=triggered, y=as_target, name="triggered-as-target"),
        "triggered_true": ArrayDataset(x=triggered, y=test.y[keep], name="triggered-true"),
    }


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig:
    """Seeded SGD with momentum and a cosine schedule (one config per experiment)."""

    epochs: int
    lr: float = 0.05
    batch_size: int = 64
    weight_decay: float = 5e-4
    momentum: float = 0.9


def dataset_fingerprint(dataset: ArrayDataset) -> str:
    digest = hashlib.sha256()
    digest.update(dataset.x.contiguous().numpy().tobytes())
    digest.update(dataset.y.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def train_model(
    spec: ModelSpec, train: ArrayDataset, config: TrainConfig, seed: int
) -> dict[str, torch.Tensor]:
    """Train the registry's architecture from scratch (seeded init and shuffling)."""
    torch.manual_seed(seed)
    model = build_model(spec)
    flat = get_architecture(spec.arch).flat_input
    inputs = prepare_inputs(train.x, spec.input, flat)
    labels = train.y.long()
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = math.ceil(len(labels) / config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.epochs * steps_per_epoch
    )
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), config.batch_size):
            batch = order[start : start + config.batch_size]
            if len(batch) < 2:  # BatchNorm needs two points
                continue
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(inputs[batch]), labels[batch]).backward()
            optimizer.step()
            schedule.step()
    model.eval()
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


@dataclass(frozen=True)
class Trained:
    state_dict: dict[str, torch.Tensor]
    seconds: float  # CPU time of the training run (as measured when it was first trained)
    cached: bool


def train_cached(
    spec: ModelSpec,
    train: ArrayDataset,
    config: TrainConfig,
    seed: int,
    *,
    cache_dir: Path = CACHE_DIR,
) -> Trained:
    """``train_model`` keyed by (spec, data, config, seed, torch version) under ``cache_dir``.

    The recorded training time is the process CPU time of the run that filled the cache (one
    torch thread: on a machine shared with others, wall time measures the neighbours), so a
    table built from the cache still reports what retraining costs."""
    from safetensors.torch import load_file, save_file

    key_source = json.dumps(
        {
            "spec": spec.model_dump(mode="json"),
            "data": dataset_fingerprint(train),
            "config": config.__dict__,
            "seed": seed,
            "torch": torch.__version__,
        },
        sort_keys=True,
    )
    key = hashlib.sha256(key_source.encode()).hexdigest()[:24]
    weights, meta = cache_dir / f"{key}.safetensors", cache_dir / f"{key}.json"
    if weights.exists() and meta.exists():
        return Trained(load_file(weights), json.loads(meta.read_text())["seconds"], True)
    started = time.process_time()
    state_dict = train_model(spec, train, config, seed)
    seconds = time.process_time() - started
    cache_dir.mkdir(parents=True, exist_ok=True)
    # temp file + rename: a parallel run reading the cache never sees half a file
    partial = weights.with_suffix(f".{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(partial))
    partial.replace(weights)
    partial_meta = meta.with_suffix(f".{os.getpid()}.tmp")
    partial_meta.write_text(json.dumps({"seconds": seconds, "key": json.loads(key_source)}))
    partial_meta.replace(meta)
    return Trained(state_dict, seconds, False)


# ----------------------------------------------------------------------------- evaluation


def evaluate_state(
    spec: ModelSpec,
    state_dict: dict[str, torch.Tensor],
    sets: dict[str, ArrayDataset],
    num_classes: int = 10,
) -> dict[str, dict]:
    """``gif.metrics.evaluate`` of a (retrained or original) model on named sets, with the same
    preprocessing and metric code as the edit's before/after metrics."""
    model = build_model(spec)
    model.load_state_dict(state_dict)
    model.eval()
    flat = get_architecture(spec.arch).flat_input
    return {
        name: evaluate(
            model,
            prepare_inputs(ds.x, spec.input, flat),
            ds.y,
            batch_size=EVAL_BATCH,
            num_classes=num_classes,
        )
        for name, ds in sets.items()
    }


def harmonic(a: float, b: float) -> float:
    """Harmonic mean of two numbers in [0, 1] (method.md E9's score); 0 when either is 0."""
    return 0.0 if a <= 0 or b <= 0 else 2 * a * b / (a + b)


# ----------------------------------------------------------------------------- editing


@dataclass(frozen=True)
class EditRun:
    result: dict  # run_edit's JSON result
    seconds: float  # process CPU time of the whole run_edit call (see ``train_cached``)
    wall_seconds: float
    state_dict: dict[str, torch.Tensor]


def edit(
    request: dict[str, Any],
    spec: ModelSpec,
    state_dict: dict[str, torch.Tensor],
    train: ArrayDataset,
    eval_sets: dict[str, ArrayDataset],
) -> EditRun:
    """One edit through ``gif.edit.run_edit`` (validated exactly as a job body would be)."""
    parsed = EditRequest.model_validate(request)
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    outcome = run_edit(parsed, LoadedModel(spec=spec, state_dict=state_dict), train, eval_sets,
                       EditHooks(progress=None, event=None, should_cancel=None))
    return EditRun(outcome.result, time.process_time() - cpu_started,
                   time.perf_counter() - wall_started, outcome.state_dict)


def after(run: EditRun, set_name: str) -> dict:
    return run.result["metrics"]["after"][set_name]


def before(run: EditRun, set_name: str) -> dict:
    return run.result["metrics"]["before"][set_name]


# ----------------------------------------------------------------------------- output


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    """``mean ± std`` over seeds (sample std), or just the value for one seed."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def failures(group: Sequence[dict]) -> str:
    """`` (k/n runs failed: code)`` for rows whose edit raised a ``GifError``; empty if none."""
    failed = [r["error"].split(":")[0] for r in group if "error" in r]
    return f" ({len(failed)}/{len(group)} runs failed: {', '.join(sorted(set(failed)))})" \
        if failed else ""


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, name: str, table: str, records: list[dict], meta: dict) -> None:
    """``<name>.md`` (the table with the command and sizes above it) and ``<name>.json``."""
    out.mkdir(parents=True, exist_ok=True)
    done = meta.get("seeds_done", meta["seeds"])
    seeds = f"{meta['seeds']}" if done == meta["seeds"] else \
        f"{meta['seeds']} requested, {done} reached so far (the run was stopped or is running)"
    header = (
        f"Command: `{meta['command']}`  \n"
        f"Sizes: {meta['sizes']}  \n"
        f"Seeds: {seeds}; wall time of the run: {meta['wall_seconds']:.0f} s "
        f"(shared machine; the tables' times are CPU seconds on one thread)\n\n"
    )
    (out / f"{name}.md").write_text(header + table)
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "records": records}, indent=1))


def seeds_done(records: list[dict]) -> int:
    """Seeds with at least one row (while a run goes on, the last one may be partial)."""
    return len({r["seed"] for r in records})


def json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor | np.ndarray):
        return value.tolist()
    raise TypeError(type(value))


def add_common_arguments(parser: argparse.ArgumentParser, default_seeds: int) -> None:
    """The flags every experiment takes: ``--quick``, ``--seeds``, ``--out``, ``--threads``."""
    parser.add_argument("--quick", action="store_true", help="tiny sizes for CI (seconds)")
    parser.add_argument("--seeds", type=int, default=default_seeds, help="run seeds 0..N-1")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where tables/plots go")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: the shared machine is oversubscribed)")
