"""The evidence behind the default request (issue 9 item 5, docs/defaults.md).

Candidates for the defaults of ``selection`` and ``solver`` are compared one change at a time
against a base request, on more than one model, by their gap to retraining from scratch:

- ``digits-mlp``: the MLP 64-64-10 on scikit-learn's digits (1,437 training points);
- ``fmnist-tinynet``: TinyNet (models.md) on a class-balanced 6,000-point Fashion-MNIST subset.

Both are trained normally (seeded SGD, momentum, cosine schedule, ``experiments.common``), and
retrained the same way without the forgotten points. Tasks: remove class 8; remove a random
10 % of the training points, tuned with a holdout set of non-members (half of a test subset,
never evaluated) and with E9's fallback (none). Every row is one ``gif.edit.run_edit`` call,
the path the service runs; the edit never sees the evaluation half of the test subset.

    python -m experiments.defaults            # both models, every candidate (a few minutes)
    python -m experiments.defaults --models digits-mlp --candidates base old_defaults

Prints a markdown table and writes ``--out`` (JSON records). CPU seconds are process time of
one thread.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.common import (
    CACHE_DIR,
    FASHION_INPUT,
    TrainConfig,
    evaluate_state,
    fashion_mnist,
    markdown_table,
    stratified_indices,
    subset,
    train_cached,
)
from gif.data import ArrayDataset, load_builtin, prepare_inputs
from gif.edit import EditHooks, LoadedModel, run_edit
from gif.registry import build_model, get_architecture
from gif.request import EditRequest
from gif.spec import InputSpec, ModelSpec

REMOVED_CLASS = 8
SAMPLE_SHARE = 0.1

BASE: dict[str, Any] = {
    "selection": {"criterion": "topk_gradients", "ratio": 0.1},
    "solver": {"hessian_samples": 256, "edit_samples": 512, "max_iter": 50},
}
"""The request the candidates change one field of (what the defaults became)."""
CANDIDATES: dict[str, dict[str, Any]] = {
    "base": {},
    "topk_outputs": {"selection": {"criterion": "topk_outputs"}},
    "ratio_0.05": {"selection": {"ratio": 0.05}},
    "ratio_0.2": {"selection": {"ratio": 0.2}},
    "hessian_128": {"solver": {"hessian_samples": 128}},
    "hessian_1024": {"solver": {"hessian_samples": 1024}},
    "edit_1024": {"solver": {"edit_samples": 1024}},
    "max_iter_100": {"solver": {"max_iter": 100}},
    "old_defaults": {"selection": {"criterion": "topk_outputs", "ratio": 0.1},
                     "solver": {"hessian_samples": 1024, "edit_samples": 1024,
                                "max_iter": 100}},
}


@dataclass(frozen=True)
class Setting:
    """A trained model and its data: training set, evaluation set, holdout set (non-members)."""

    name: str
    spec: ModelSpec
    config: TrainConfig
    train: ArrayDataset
    test: ArrayDataset
    holdout: ArrayDataset


def digits_mlp() -> Setting:
    train, test = load_builtin("builtin:digits:train"), load_builtin("builtin:digits:test")
    half = len(test.y) // 2
    spec = ModelSpec(arch="mlp", arch_kwargs={"in_features": 64, "hidden": [64],
                                              "num_classes": 10}, input=InputSpec(scale=1 / 16))
    return Setting("digits-mlp", spec, TrainConfig(epochs=60, lr=0.05, batch_size=64), train,
                   subset(test, torch.arange(half, len(test.y)), "digits-test-eval"),
                   subset(test, torch.arange(half), "digits-test-holdout"))


def fmnist_tinynet() -> Setting:
    full_train, full_test = fashion_mnist("train"), fashion_mnist("test")
    train = subset(full_train, stratified_indices(full_train.y, 600, seed=0), "fmnist-6k")
    picked = stratified_indices(full_test.y, 300, seed=1)  # 3,000 test points
    test = subset(full_test, picked[:2000], "fmnist-test-eval")
    holdout = subset(full_test, picked[2000:], "fmnist-test-holdout")
    spec = ModelSpec(arch="tinynet", arch_kwargs={"in_channels": 1, "num_classes": 10},
                     input=FASHION_INPUT)
    return Setting("fmnist-tinynet", spec, TrainConfig(epochs=5, lr=0.05, batch_size=64), train,
                   test, holdout)


SETTINGS = {"digits-mlp": digits_mlp, "fmnist-tinynet": fmnist_tinynet}


def merged(base: dict, change: dict) -> dict:
    out = {key: dict(value) for key, value in base.items()}
    for key, value in change.items():
        out.setdefault(key, {}).update(value)
    return out


def sample_indices(train: ArrayDataset, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    count = round(SAMPLE_SHARE * len(train.y))
    return sorted(rng.choice(len(train.y), size=count, replace=False).tolist())


def forgotten_mask(train: ArrayDataset, task: str) -> torch.Tensor:
    if task == "remove_class":
        return train.y == REMOVED_CLASS
    mask = torch.zeros(len(train.y), dtype=torch.bool)
    mask[torch.as_tensor(sample_indices(train))] = True
    return mask


def measure(setting: Setting, state: dict, task: str) -> dict[str, float]:
    """The benchmark's numbers of one model (the same code for edits and retraining)."""
    mask = forgotten_mask(setting.train, task)
    forget = subset(setting.train, torch.nonzero(mask).flatten(), "forget")
    metrics = evaluate_state(setting.spec, state, {"forget": forget, "test": setting.test})
    test = metrics["test"]
    out = {"forget_acc": metrics["forget"]["accuracy"], "test_acc": test["accuracy"]}
    if task == "remove_class":
        # evaluate() is called without removed_class here; split the test set by hand
        keep = setting.test.y != REMOVED_CLASS
        split = evaluate_state(setting.spec, state, {
            "other": subset(setting.test, torch.nonzero(keep).flatten(), "other"),
            "removed": subset(setting.test, torch.nonzero(~keep).flatten(), "removed")})
        out["test_acc"] = split["other"]["accuracy"]
        out["removed_test_acc"] = split["removed"]["accuracy"]
    return out


def reference(setting: Setting, task: str, seed: int = 0) -> tuple[dict, float]:
    mask = forgotten_mask(setting.train, task)
    retained = subset(setting.train, torch.nonzero(~mask).flatten(), "retained")
    trained = train_cached(setting.spec, retained, setting.config, seed, cache_dir=CACHE_DIR)
    return measure(setting, trained.state_dict, task), trained.seconds


def edit_body(task: str, setting: Setting, candidate: dict, holdout: bool) -> dict:
    body = merged(BASE, candidate)
    if task == "remove_class":
        body["edit"] = {"kind": "remove_class", "class": REMOVED_CLASS}
    else:
        body["edit"] = {"kind": "remove_samples", "indices": sample_indices(setting.train)}
        if holdout:
            body["step"] = {"holdout_dataset_id": setting.holdout.name}
    return body


def run_one(setting: Setting, original: dict, task: str, name: str, holdout: bool) -> dict:
    body = edit_body(task, setting, CANDIDATES[name], holdout)
    started = time.process_time()
    outcome = run_edit(EditRequest.model_validate(body),
                       LoadedModel(setting.spec, original), setting.train, {},
                       EditHooks(), holdout=setting.holdout if holdout else None)
    seconds = time.process_time() - started
    result = outcome.result
    chosen = (result.get("path") or {}).get("chosen") or {}
    return {**measure(setting, outcome.state_dict, task), "cpu_s": seconds,
            "iteration": chosen.get("iteration"), "scale": result["scale"],
            "stop_reason": result["solver"]["stop_reason"],
            "warnings": [w["code"] for w in result["warnings"]]}


def run_without_path(setting: Setting, original: dict, criterion: str) -> dict:
    """The engine before the path (the issue's failing default, for attribution): the solve runs
    to its own stop (``max_iter`` 100), then only α is searched, on the final iterate, with the
    same class-removal objective on a seeded 10 % validation split of the retained points."""
    from gif.edit.measure import step_objective
    from gif.edit.plan import EditData
    from gif.step import search_scale

    body = edit_body("remove_class", setting, {}, False)
    body["selection"]["criterion"] = criterion
    body["solver"].update({"max_iter": 100, "hessian_samples": 1024, "edit_samples": 1024})
    body["step"] = {"mode": "fixed", "scale": 1.0}
    started = time.process_time()
    outcome = run_edit(EditRequest.model_validate(body), LoadedModel(setting.spec, original),
                       setting.train, {}, EditHooks())
    model = build_model(setting.spec).eval()
    flat = get_architecture(setting.spec.arch).flat_input
    delta = {k: outcome.state_dict[k] - original[k] for k in original}
    retained = torch.nonzero(setting.train.y != REMOVED_CLASS).flatten()
    val = retained[torch.randperm(len(retained), generator=torch.Generator().manual_seed(0))][
        : len(retained) // 10]
    forget = torch.nonzero(setting.train.y == REMOVED_CLASS).flatten()[:1024]
    inputs = lambda idx: prepare_inputs(setting.train.x[idx], setting.spec.input, flat)  # noqa: E731
    empty = torch.empty(0)
    data = EditData(u_x=inputs(forget), u_y=setting.train.y[forget].long(), u_new_y=None,
                    h_x=empty, h_y=empty, val_x=inputs(val), val_y=setting.train.y[val].long(),
                    forget_x=empty, forget_y=empty, forget_new_y=None, retain_x=empty,
                    retain_y=empty)

    def apply(alpha: float):
        model.load_state_dict({k: original[k] + alpha * delta[k] for k in original})
        return model

    curve = search_scale(apply, step_objective("remove_class", data, 10))
    state = {k: original[k] + curve.scale * delta[k] for k in original}
    return {**measure(setting, state, "remove_class"), "cpu_s": time.process_time() - started,
            "iteration": outcome.result["solver"]["iterations"], "scale": curve.scale,
            "stop_reason": outcome.result["solver"]["stop_reason"], "warnings": []}


def gap(row: dict, ref: dict) -> float:
    """Mean absolute gap to retraining over the task's accuracies (percentage points)."""
    keys = [k for k in ("forget_acc", "test_acc", "removed_test_acc") if k in ref]
    return 100 * sum(abs(row[k] - ref[k]) for k in keys) / len(keys)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES),
                        choices=list(CANDIDATES))
    parser.add_argument("--tasks", nargs="+", default=["remove_class", "remove_samples"],
                        choices=["remove_class", "remove_samples"])
    parser.add_argument("--without-path", action="store_true",
                        help="also run class removal the way the engine did before the path "
                             "(final iterate of a 100-iteration solve, α searched), for both "
                             "output-based and gradient-based selection")
    parser.add_argument("--out", type=Path, default=CACHE_DIR / "defaults.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    records, rows = [], []
    for model_name in args.models:
        setting = SETTINGS[model_name]()
        trained = train_cached(setting.spec, setting.train, setting.config, 0)
        for task in args.tasks:
            ref, ref_s = reference(setting, task)
            rows.append([model_name, task, "retrain", "", *_cells(ref), "–", f"{ref_s:.1f}", ""])
            none = measure(setting, trained.state_dict, task)
            rows.append([model_name, task, "no edit", "", *_cells(none), f"{gap(none, ref):.1f}",
                         "0", ""])
            # sample removal: every candidate with the holdout; E9's fallback (no holdout) for
            # the base request only
            if args.without_path and task == "remove_class":
                for criterion in ("topk_outputs", "topk_gradients"):
                    row = run_without_path(setting, trained.state_dict, criterion)
                    rows.append([model_name, task, f"no path, {criterion}",
                                 f"k={row['iteration']} α={row['scale']:.3g}", *_cells(row),
                                 f"{gap(row, ref):.1f}", f"{row['cpu_s']:.1f}", ""])
                    records.append({"model": model_name, "task": task,
                                    "candidate": f"no_path_{criterion}", **row, "retrain": ref,
                                    "gap": gap(row, ref)})
                    print(" | ".join(str(c) for c in rows[-1]), flush=True)
            variants = [(n, h) for n in args.candidates
                        for h in (((True, False) if n == "base" else (True,))
                                  if task == "remove_samples" else (False,))]
            for name, holdout in variants:
                row = run_one(setting, trained.state_dict, task, name, holdout)
                label = name + (" +holdout" if holdout else "")
                rows.append([model_name, task, label, f"k={row['iteration']} α={row['scale']:.3g}",
                             *_cells(row), f"{gap(row, ref):.1f}", f"{row['cpu_s']:.1f}",
                             ",".join(row["warnings"])])
                records.append({"model": model_name, "task": task, "candidate": name,
                                "holdout": holdout, "request": edit_body(
                                    task, setting, CANDIDATES[name], holdout) | {
                                    "edit": task}, **row, "retrain": ref,
                                "retrain_cpu_s": ref_s, "gap": gap(row, ref)})
                print(" | ".join(str(c) for c in rows[-1]), flush=True)
    header = ["model", "task", "request", "chosen", "forget acc", "test acc (other classes)",
              "removed-class test acc", "mean gap to retrain (pts)", "CPU s", "warnings"]
    print(markdown_table(header, rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(records, indent=1))


def _cells(row: dict) -> list[str]:
    removed = row.get("removed_test_acc")
    return [f"{row['forget_acc']:.3f}", f"{row['test_acc']:.3f}",
            "–" if removed is None else f"{removed:.3f}"]


if __name__ == "__main__":
    main()
