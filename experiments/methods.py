"""Table 2 of the paper: GIF against the influence-function baselines FIF (frozen IF, E4),
PIF (projected IF, E5) and IF (all parameters, E2) for class removal on ResNet-18 /
Fashion-MNIST, at several modification ratios, with retraining from scratch as the reference.
Every method uses the same selection (top-k outputs), the same solver (LSQR), the same
Hessian/edit samples and the same honest step search (E9), so only the method differs.

    python -m experiments.methods [--quick] [--seeds N] [--out docs/results]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from experiments.common import (
    CACHE_DIR,
    add_common_arguments,
    failures,
    markdown_table,
    mean_std,
    seeds_done,
    write_outputs,
)
from experiments.plotting import line_panels
from experiments.removal import (
    add_arch_argument,
    output_name,
    prepare,
    record_from_metrics,
    removal_request,
    run_removal_edit,
    sizes_for,
    summary,
)

SELECTIVE_METHODS = ("gif", "fif", "pif")
FULL_RATIOS = (0.1, 0.3, 0.5)
QUICK_RATIOS = (0.1,)
CRITERION = "topk_outputs"


def run(*, quick: bool, seeds: int, out: Path, cache_dir: Path = CACHE_DIR,
        arch: str = "resnet18") -> list[dict]:
    """Every (seed, method, ratio) edit, IF once per seed (it moves every parameter), and the
    original and retrained rows; writes ``methods[-<arch>].md``, ``.json``, ``.png`` (rewritten
    after every edit)."""
    sizes = sizes_for(quick, arch)
    ratios = QUICK_RATIOS if quick else FULL_RATIOS
    name = output_name("methods", quick, arch)
    started = time.perf_counter()
    records: list[dict] = []

    def write() -> None:
        meta = {
            "command": command_line(quick, seeds, out, arch),
            "sizes": sizes.describe() + f"; selection {CRITERION}; ratios {list(ratios)}",
            "seeds": seeds,
            "seeds_done": seeds_done(records),
            "wall_seconds": time.perf_counter() - started,
        }
        write_outputs(out, name, table(records), records, meta)
        plot(records, ratios, out / f"{name}.png", sizes.arch)

    for seed in range(seeds):
        setup = prepare(sizes, seed, cache_dir)
        records.append({"row": "original", "seed": seed, **record_from_metrics(
            setup.original_metrics), "seconds": None, "hvps": None})
        records.append({"row": "retrain", "seed": seed, **record_from_metrics(
            setup.retrained_metrics), "seconds": setup.retrained.seconds, "hvps": None})
        jobs = [(m, r) for r in ratios for m in SELECTIVE_METHODS]
        jobs.insert(len(SELECTIVE_METHODS), ("if", 1.0))  # after the first ratio: early, once
        for method, ratio in jobs:
            request = removal_request(
                sizes, method=method, criterion=CRITERION, ratio=ratio, seed=seed
            )
            record, _ = run_removal_edit(setup, request)
            records.append({"row": method, "ratio": ratio, "seed": seed, **record})
            print(f"seed {seed} {method:4s} {ratio:4.2f} {summary(record)}", flush=True)
            write()
    write()
    return records


def command_line(quick: bool, seeds: int, out: Path, arch: str) -> str:
    return "python -m experiments.methods" + (" --quick" if quick else f" --arch {arch}") + \
        f" --seeds {seeds} --out {out}"


COLUMNS = ("test_acc", "test_loss", "forget_acc", "forget_loss", "test_forget_acc", "score")
NAMES = {"gif": "GIF", "fif": "FIF", "pif": "PIF", "if": "IF (all parameters)"}


def table(records: list[dict]) -> str:
    header = ["method", "ratio", "test acc (remaining)", "test loss (remaining)", "forget acc",
              "forget loss", "test acc (class 8)", "score", "α", "HVPs", "CPU time [s]"]
    rows = []
    for name in ("original", "retrain"):
        group = [r for r in records if r["row"] == name]
        rows.append([name, "–", *[mean_std([r.get(c) for r in group]) for c in COLUMNS], "–", "–",
                     mean_std([r["seconds"] for r in group], 1)])
    ratios = sorted({r["ratio"] for r in records if r["row"] in SELECTIVE_METHODS})
    for ratio in ratios:
        for method in SELECTIVE_METHODS:
            rows.append(_edit_row([r for r in records if r["row"] == method
                                   and r["ratio"] == ratio], NAMES[method], f"{ratio:.0%}"))
    rows.append(_edit_row([r for r in records if r["row"] == "if"], NAMES["if"], "100%"))
    return markdown_table(header, rows)


def _edit_row(group: list[dict], name: str, ratio: str) -> list[str]:
    cells = [mean_std([r.get(c) for r in group]) for c in COLUMNS]
    return [name + failures(group), ratio, *cells,
            mean_std([r.get("scale") for r in group], 3),
            mean_std([r.get("hvps") for r in group], 0),
            mean_std([r.get("seconds") for r in group], 1)]


def plot(records: list[dict], ratios, path: Path, arch: str) -> None:
    series = {NAMES[m]: [r for r in records if r["row"] == m] for m in SELECTIVE_METHODS}
    line_panels(
        path,
        x_values=sorted(ratios),
        x_label="modification ratio",
        panels=[("test accuracy (remaining classes)", "test_acc"),
                ("forget accuracy (class-8 train points)", "forget_acc"),
                ("score H(1 − test acc class 8, test acc rest)", "score")],
        series=series,
        x_key="ratio",
        references={"retrain": [r for r in records if r["row"] == "retrain"],
                    "IF (all)": [r for r in records if r["row"] == "if"]},
        title=f"Class removal: GIF vs FIF vs PIF ({arch}, Fashion-MNIST class 8)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, default_seeds=1)
    add_arch_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    run(quick=args.quick, seeds=args.seeds, out=args.out, arch=args.arch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
