"""Table 1 of the paper: which parameters to move. ResNet-18 on Fashion-MNIST, class 8 removed
by GIF with each selection criterion (top-k outputs, top-k gradients, threshold, random) at
several modification ratios; forget and test (remaining classes) loss and accuracy, with
retraining from scratch as the reference.

    python -m experiments.selection [--quick] [--seeds N] [--out docs/results]
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

CRITERIA = ("topk_outputs", "topk_gradients", "threshold", "random")
# τ for the threshold criterion: |mean output| of a unit on the forgotten points. Units of
# BatchNorm'd convolutions have outputs of order 0.1–1; layers where too few units pass get a
# lower τ (method.md, Parameter selection), so τ only has to be a sensible starting point.
THRESHOLD = 0.1

FULL_RATIOS = (0.1, 0.05, 0.3, 0.5)  # run in this order: 10% first
QUICK_RATIOS = (0.1,)


def run(*, quick: bool, seeds: int, out: Path, cache_dir: Path = CACHE_DIR,
        arch: str = "resnet18") -> list[dict]:
    """Every (seed, criterion, ratio) edit plus the original and retrained rows; writes
    ``selection[-<arch>].md``, ``.json`` and ``.png`` into ``out`` (rewritten after every edit,
    so a long run that is stopped still leaves what it measured)."""
    sizes, ratios = sizes_for(quick, arch), (QUICK_RATIOS if quick else FULL_RATIOS)
    name = output_name("selection", quick, arch)
    started = time.perf_counter()
    records: list[dict] = []

    def write() -> None:
        meta = {
            "command": command_line(quick, seeds, out, arch),
            "sizes": sizes.describe() + f"; ratios {list(ratios)}; threshold τ={THRESHOLD}",
            "seeds": seeds,
            "seeds_done": seeds_done(records),
            "wall_seconds": time.perf_counter() - started,
        }
        write_outputs(out, name, table(records), records, meta)
        plot(records, ratios, out / f"{name}.png", sizes.arch)

    for seed in range(seeds):
        setup = prepare(sizes, seed, cache_dir)
        records.append({"row": "original", "seed": seed, **record_from_metrics(
            setup.original_metrics), "seconds": setup.original.seconds})
        records.append({"row": "retrain", "seed": seed, **record_from_metrics(
            setup.retrained_metrics), "seconds": setup.retrained.seconds})
        for ratio in ratios:  # ratio outermost: a stopped run has every criterion at some ratio
            for criterion in CRITERIA:
                request = removal_request(
                    sizes, method="gif", criterion=criterion, ratio=ratio, seed=seed,
                    threshold=THRESHOLD if criterion == "threshold" else None,
                )
                record, _ = run_removal_edit(setup, request)
                records.append(
                    {"row": "gif", "criterion": criterion, "ratio": ratio, "seed": seed, **record}
                )
                print(f"seed {seed} {criterion:15s} {ratio:4.2f} {summary(record)}", flush=True)
                write()
    write()
    return records


def command_line(quick: bool, seeds: int, out: Path, arch: str) -> str:
    return "python -m experiments.selection" + (" --quick" if quick else f" --arch {arch}") + \
        f" --seeds {seeds} --out {out}"


COLUMNS = ("forget_acc", "forget_loss", "test_acc", "test_loss", "test_forget_acc", "score")


def table(records: list[dict]) -> str:
    header = ["method", "criterion", "ratio", "forget acc", "forget loss", "test acc (remaining)",
              "test loss (remaining)", "test acc (class 8)", "score", "α", "CPU time [s]"]
    rows = []
    for name in ("original", "retrain"):
        group = [r for r in records if r["row"] == name]
        rows.append([name, "–", "–", *[mean_std([r.get(c) for r in group]) for c in COLUMNS], "–",
                     mean_std([r["seconds"] for r in group], 1)])
    edits = [r for r in records if r["row"] == "gif"]
    keys = sorted({(r["criterion"], r["ratio"]) for r in edits},
                  key=lambda k: (CRITERIA.index(k[0]), k[1]))
    for criterion, ratio in keys:
        group = [r for r in edits if r["criterion"] == criterion and r["ratio"] == ratio]
        cells = [mean_std([r.get(c) for r in group]) for c in COLUMNS]
        rows.append(["GIF" + failures(group), criterion, f"{ratio:.0%}", *cells,
                     mean_std([r.get("scale") for r in group], 3),
                     mean_std([r.get("seconds") for r in group], 1)])
    return markdown_table(header, rows)


def plot(records: list[dict], ratios, path: Path, arch: str) -> None:
    edits = [r for r in records if r["row"] == "gif"]
    retrain = [r for r in records if r["row"] == "retrain"]
    series = {c: [r for r in edits if r["criterion"] == c] for c in CRITERIA}
    line_panels(
        path,
        x_values=sorted(ratios),
        x_label="modification ratio",
        panels=[("forget accuracy (class-8 train points)", "forget_acc"),
                ("test accuracy (remaining classes)", "test_acc")],
        series=series,
        x_key="ratio",
        references={"retrain": retrain},
        title=f"GIF class removal ({arch}, Fashion-MNIST class 8): selection criteria",
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
