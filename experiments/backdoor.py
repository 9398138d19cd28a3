"""Table 3 of the paper: backdoor recovery. TinyNet trained on Fashion-MNIST where 10% of the
training images carry the checkerboard trigger and the label 4 (models.md); the edit relabels
the poisoned points to their true classes with GIF / FIF / PIF / IF at modification ratios 5%
and 10%; the reference is TinyNet retrained on the corrected data (same images, true labels).

Measured on the test split: clean accuracy, attack success rate (ASR: the share of triggered
test images whose true class is not 4 that the model calls 4) and the accuracy on those
triggered images against their true labels; on the training side, the accuracy of the poisoned
points against their corrected labels.

    python -m experiments.backdoor [--quick] [--seeds N] [--out docs/results]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from experiments.common import (
    CACHE_DIR,
    FASHION_INPUT,
    ArrayDataset,
    TrainConfig,
    add_common_arguments,
    after,
    edit,
    evaluate_state,
    failures,
    fashion_mnist,
    harmonic,
    markdown_table,
    mean_std,
    poison,
    seeds_done,
    stratified_indices,
    subset,
    train_cached,
    triggered_test_sets,
    write_outputs,
)
from experiments.plotting import line_panels
from gif.errors import GifError
from gif.spec import ModelSpec

TARGET = 4
METHODS = ("gif", "fif", "pif")
NAMES = {"gif": "GIF", "fif": "FIF", "pif": "PIF", "if": "IF (all parameters)"}


@dataclass(frozen=True)
class BackdoorSizes:
    train_per_class: int = 500
    test_per_class: int = 300
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=6, lr=0.05))
    ratios: tuple[float, ...] = (0.05, 0.1)
    methods: tuple[str, ...] = ("gif", "fif", "pif", "if")
    hessian_samples: int = 256
    edit_samples: int = 256
    max_iter: int = 20
    tol: float = 1e-3
    retain_samples: int = 1024

    def describe(self) -> str:
        return (
            f"TinyNet on Fashion-MNIST 28×28, {self.train_per_class}/class train "
            f"({10 * self.train_per_class}, 10% poisoned), {self.test_per_class}/class test, "
            f"{self.train.epochs} epochs SGD (lr {self.train.lr}, batch {self.train.batch_size}); "
            f"edit: LSQR max {self.max_iter} iterations (tol {self.tol}), "
            f"{self.hessian_samples} Hessian samples, {self.edit_samples} edit samples; "
            f"ratios {list(self.ratios)}"
        )


FULL = BackdoorSizes()
QUICK = BackdoorSizes(
    train_per_class=300, test_per_class=100, train=TrainConfig(epochs=6, lr=0.05),
    ratios=(0.1,), methods=("gif",), hessian_samples=256, edit_samples=256, max_iter=15,
    retain_samples=256,
)

SPEC = ModelSpec(arch="tinynet", arch_kwargs={"in_channels": 1, "num_classes": 10},
                 input=FASHION_INPUT, name="tinynet-backdoored")


@dataclass(frozen=True)
class BackdoorSetup:
    poisoned_train: ArrayDataset
    indices: torch.Tensor
    true_labels: torch.Tensor
    eval_sets: dict
    relabeled: ArrayDataset  # the poisoned training points with their corrected labels
    original: object
    retrained: object


def prepare(sizes: BackdoorSizes, seed: int, cache_dir: Path) -> BackdoorSetup:
    train_all, test_all = fashion_mnist("train"), fashion_mnist("test")
    clean = subset(train_all, stratified_indices(train_all.y, sizes.train_per_class, seed), "train")
    test = subset(test_all, stratified_indices(test_all.y, sizes.test_per_class, 0), "test")
    poisoned = poison(clean, fraction=0.1, target=TARGET, seed=seed)
    corrected_y = poisoned.dataset.y.clone()
    corrected_y[poisoned.indices] = poisoned.true_labels
    corrected = ArrayDataset(x=poisoned.dataset.x, y=corrected_y, name="train-corrected")
    return BackdoorSetup(
        poisoned_train=poisoned.dataset,
        indices=poisoned.indices,
        true_labels=poisoned.true_labels,
        eval_sets={"test": test, **triggered_test_sets(test, TARGET)},
        relabeled=ArrayDataset(x=poisoned.dataset.x[poisoned.indices], y=poisoned.true_labels,
                               name="relabeled"),
        original=train_cached(SPEC, poisoned.dataset, sizes.train, seed, cache_dir=cache_dir),
        retrained=train_cached(SPEC, corrected, sizes.train, seed, cache_dir=cache_dir),
    )


def relabel_request(sizes: BackdoorSizes, setup: BackdoorSetup, *, method: str, ratio: float,
                    seed: int, algorithm: str = "lsqr", max_iter: int | None = None,
                    tol: float | None = None) -> dict:
    return {
        "edit": {"kind": "relabel", "indices": setup.indices.tolist(),
                 "labels": setup.true_labels.tolist()},
        "method": method,
        "selection": {"criterion": "topk_outputs", "ratio": ratio},
        "solver": {"algorithm": algorithm, "max_iter": max_iter or sizes.max_iter,
                   "tol": tol or sizes.tol, "hessian_samples": sizes.hessian_samples,
                   "edit_samples": sizes.edit_samples},
        "step": {"mode": "auto"},
        "eval": {"retain_samples": sizes.retain_samples},
        "device": "cpu",
        "seed": seed,
    }


def record_from_metrics(metrics: dict) -> dict:
    return {
        "test_acc": metrics["test"]["accuracy"],
        "test_loss": metrics["test"]["loss"],
        "asr": metrics["triggered_as_target"]["accuracy"],
        "triggered_acc": metrics["triggered_true"]["accuracy"],
        "relabeled_acc": metrics["relabeled"]["accuracy"],
        "score": harmonic(metrics["triggered_true"]["accuracy"], metrics["test"]["accuracy"]),
    }


def run(*, quick: bool, seeds: int, out: Path, cache_dir: Path = CACHE_DIR) -> list[dict]:
    sizes = QUICK if quick else FULL
    started = time.perf_counter()
    records: list[dict] = []

    def write() -> None:  # after every edit: a stopped run still leaves what it measured
        meta = {"command": command_line(quick, seeds, out), "sizes": sizes.describe(),
                "seeds": seeds, "seeds_done": seeds_done(records),
                "wall_seconds": time.perf_counter() - started}
        write_outputs(out, "backdoor", table(records), records, meta)
        plot(records, sizes.ratios, out / "backdoor.png")

    for seed in range(seeds):
        setup = prepare(sizes, seed, cache_dir)
        measured = {**setup.eval_sets, "relabeled": setup.relabeled}
        for row, trained in (("original", setup.original), ("retrain", setup.retrained)):
            metrics = evaluate_state(SPEC, trained.state_dict, measured)
            records.append({"row": row, "seed": seed, **record_from_metrics(metrics),
                            "seconds": trained.seconds})
        jobs = [(m, r) for r in sizes.ratios for m in sizes.methods if m != "if"]
        if "if" in sizes.methods:
            jobs.insert(len(METHODS), ("if", 1.0))  # after the first ratio: early and once
        for method, ratio in jobs:
            request = relabel_request(sizes, setup, method=method, ratio=ratio, seed=seed)
            try:
                run_ = edit(request, SPEC, setup.original.state_dict, setup.poisoned_train,
                            setup.eval_sets)
            except GifError as error:  # a failed method is a finding for the table
                records.append({"row": method, "ratio": ratio, "seed": seed,
                                "error": f"{error.code}: {error.message}"})
                print(f"seed {seed} {method} {ratio}: FAILED {error.code}", flush=True)
                write()
                continue
            # run_edit's ``relabeled``: every poisoned training point against its true label
            metrics = {k: after(run_, k) for k in ("relabeled", *setup.eval_sets)}
            record = {"row": method, "ratio": ratio, "seed": seed, **record_from_metrics(metrics),
                      "scale": run_.result["scale"], "hvps": run_.result["solver"]["hvps"],
                      "seconds": run_.seconds}
            records.append(record)
            print(f"seed {seed} {method:4s} {ratio:4.2f} ASR {record['asr']:.3f} "
                  f"clean {record['test_acc']:.3f} ({record['seconds']:.0f} s)", flush=True)
            write()
    write()
    return records


def command_line(quick: bool, seeds: int, out: Path) -> str:
    return "python -m experiments.backdoor" + (" --quick" if quick else "") + \
        f" --seeds {seeds} --out {out}"


COLUMNS = ("test_acc", "asr", "triggered_acc", "relabeled_acc", "score")


def table(records: list[dict]) -> str:
    header = ["method", "ratio", "clean test acc", "ASR", "triggered test acc (true labels)",
              "poisoned train acc (corrected labels)", "score", "α", "HVPs", "CPU time [s]"]
    rows = []
    for name in ("original", "retrain"):
        group = [r for r in records if r["row"] == name]
        rows.append([name + (" (backdoored)" if name == "original" else " (corrected data)"),
                     "–", *[mean_std([r.get(c) for r in group]) for c in COLUMNS], "–", "–",
                     mean_std([r["seconds"] for r in group], 1)])
    ratios = sorted({r["ratio"] for r in records if r["row"] in METHODS})
    for ratio in ratios:
        for method in METHODS:
            group = [r for r in records if r["row"] == method and r["ratio"] == ratio]
            if group:
                rows.append(_edit_row(group, NAMES[method], f"{ratio:.0%}"))
    group = [r for r in records if r["row"] == "if"]
    if group:
        rows.append(_edit_row(group, NAMES["if"], "100%"))
    return markdown_table(header, rows)


def _edit_row(group: list[dict], name: str, ratio: str) -> list[str]:
    cells = [mean_std([r.get(c) for r in group]) for c in COLUMNS]
    return [name + failures(group), ratio, *cells,
            mean_std([r.get("scale") for r in group], 3),
            mean_std([r.get("hvps") for r in group], 0),
            mean_std([r.get("seconds") for r in group], 1)]


def plot(records: list[dict], ratios, path: Path) -> None:
    series = {NAMES[m]: [r for r in records if r["row"] == m] for m in METHODS}
    line_panels(
        path,
        x_values=list(ratios),
        x_label="modification ratio",
        panels=[("attack success rate", "asr"), ("clean test accuracy", "test_acc"),
                ("triggered test accuracy (true labels)", "triggered_acc")],
        series={k: v for k, v in series.items() if v},
        x_key="ratio",
        references={"retrain": [r for r in records if r["row"] == "retrain"],
                    "backdoored": [r for r in records if r["row"] == "original"],
                    "IF (all)": [r for r in records if r["row"] == "if"]},
        title="Backdoor recovery by relabeling (TinyNet, Fashion-MNIST, checkerboard → 4)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, default_seeds=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    run(quick=args.quick, seeds=args.seeds, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
