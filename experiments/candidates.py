"""Candidate defaults on the benchmark's own tasks (docs/defaults.md, "The medium benchmark").

One task of ``bench/bench_unlearning.py`` (``class``: remove class 8; ``sample``: remove a random
10 %; ``backdoor``: models.md's checkerboard → 4 on 10 % of the training images, relabelled to
their true classes), on its ``medium`` scale by default: TinyNet on a class-balanced 6,000-point
Fashion-MNIST subset trained with the benchmark's recipe (Adam, 10 epochs), converged, with the
backdoor implanted (ASR ≈ 0.97), unlike ``small``. The same tasks, cached original, metrics
(``measure``) and rows (``run_row``) as the benchmark: the default request, candidates that
change one field of it, one epoch of fine-tuning, and retraining (the reference).

    python -m experiments.candidates --task backdoor        # every candidate (~15 CPU minutes)
    python -m experiments.candidates --task class --candidates default "method fif"

Prints a markdown table; CPU seconds are process time of one thread.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

ENGINE = "_engine"
"""A candidate's key for engine settings that are constants, not request fields (set for that
row only, then restored): ``NAME`` is one of ``gif.edit.update``, ``module:NAME`` one of
``module``."""

CANDIDATES: dict[str, dict[str, Any]] = {
    "default": {},
    "criterion topk_outputs": {"selection": {"criterion": "topk_outputs"}},
    "ratio 0.05": {"selection": {"ratio": 0.05}},
    "ratio 0.2": {"selection": {"ratio": 0.2}},
    "ratio 1.0 (every parameter)": {"selection": {"ratio": 1.0}},
    "hessian_samples 256 (the old default)": {"solver": {"hessian_samples": 256}},
    "hessian_samples 1024": {"solver": {"hessian_samples": 1024}},
    "edit_samples 2048 (all edited points)": {"solver": {"edit_samples": 2048}},
    "damping 0.01": {"solver": {"damping": 0.01}},
    "damping 0.03": {"solver": {"damping": 0.03}},
    "damping 0.1": {"solver": {"damping": 0.1}},
    "preconditioner columns": {"solver": {"preconditioner": "columns"}},
    "preconditioner none": {"solver": {"preconditioner": "none"}},
    "preconditioner none, seed 1": {"solver": {"preconditioner": "none"}, "seed": 1},
    "preconditioner columns, 32 probes": {"solver": {"preconditioner": "columns",
                                                     "preconditioner_probes": 32}},
    "preconditioner columns, 32 probes, seed 1": {"solver": {"preconditioner": "columns",
                                                             "preconditioner_probes": 32},
                                                  "seed": 1},
    "preconditioner columns, max_iter 100": {"solver": {"preconditioner": "columns",
                                                        "max_iter": 100}},
    "preconditioner layers": {"solver": {"preconditioner": "layers"}},
    "preconditioner layers, seed 1": {"solver": {"preconditioner": "layers"}, "seed": 1},
    "preconditioner columns, seed 1": {"solver": {"preconditioner": "columns"}, "seed": 1},
    "seed 1": {"seed": 1},
    "max_iter 100": {"solver": {"max_iter": 100}},
    "max_iter 16": {"solver": {"max_iter": 16}},
    "max_iter 16, seed 1": {"solver": {"max_iter": 16}, "seed": 1},
    "method fif": {"method": "fif"},
    "method pif": {"method": "pif"},
    "method pif, preconditioner none": {"method": "pif", "solver": {"preconditioner": "none"}},
    # the default request under the hand-over rule before 7 December 2026 (no far-α rule:
    # gif.request.AUTO_SCALING_FAR_SCALE = inf for this row only; not a request field)
    "default, hand-over rule before 7 Dec": {
        ENGINE: {"AUTO_SCALING_FAR_SCALE": float("inf")}},
    # the default request before 8 December 2026: the far-α rule from k = 3 for every method,
    # and every α scored in full (no pruning below the search's floor, gif.step.PRUNING)
    "default before 8 Dec": {
        ENGINE: {"AUTO_SCALING_FAR_FROM": {"gif": 3, "fif": 3, "pif": 3, "if": 3},
                 "gif.step:PRUNING": False}},
    "default, every α scored in full": {ENGINE: {"gif.step:PRUNING": False}},
    "finetune 1 epoch": {"method": "finetune", "training": {"epochs": 1}},
    "gradient_ascent 1 epoch": {"method": "gradient_ascent", "training": {"epochs": 1}},
    "random_labels 1 epoch": {"method": "random_labels", "training": {"epochs": 1}},
    "salun 1 epoch": {"method": "salun", "training": {"epochs": 1}},
    "l1_sparse 1 epoch": {"method": "l1_sparse", "training": {"epochs": 1}},
    "retrain (reference)": {"method": "retrain"},
}


def load_bench():
    """``bench/bench_unlearning.py`` (a script, not a package): its tasks and metrics."""
    spec = importlib.util.spec_from_file_location("bench_unlearning",
                                                  REPO_ROOT / "bench" / "bench_unlearning.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@contextmanager
def engine_constants(values: dict[str, Any]):
    """Set engine constants (``ENGINE``'s names) for one row."""
    import gif.edit.update

    def owner(name: str) -> tuple[Any, str]:
        module, _, constant = name.rpartition(":")
        return (importlib.import_module(module) if module else gif.edit.update), constant

    targets = [(*owner(name), value) for name, value in values.items()]
    saved = [(module, constant, getattr(module, constant)) for module, constant, _ in targets]
    try:
        for module, constant, value in targets:
            setattr(module, constant, value)
        yield
    finally:
        for module, constant, old in saved:
            setattr(module, constant, old)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="medium", help="a bench_unlearning scale")
    parser.add_argument("--task", default="backdoor", choices=("class", "sample", "backdoor"))
    parser.add_argument("--candidates", nargs="*", default=list(CANDIDATES),
                        choices=list(CANDIDATES), metavar="NAME")
    parser.add_argument("--column-floor", type=float, default=None,
                        help="gif.solvers.COLUMN_FLOOR for this run (the column scaling's "
                             "floor, a share of the norms' rms; not a request field)")
    parser.add_argument("--model-seed", type=int, default=None,
                        help="the seed of the data draw and the original model (default: the "
                             "scale's first, e.g. 1 for full-tinynet-seed1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.column_floor is not None:
        import gif.solvers

        gif.solvers.COLUMN_FLOOR = args.column_floor
    bench = load_bench()
    scale = bench.SCALES[args.scale]
    seed = scale.seeds[0] if args.model_seed is None else args.model_seed
    task = next(t for t in bench.build_tasks(bench.TINYNET, scale, seed) if t.name == args.task)
    spec = bench.TINYNET.spec
    columns = COLUMNS[args.task]
    original, _ = bench.cached_original(spec, task.train, scale.training(), seed)
    bench.warm_up(spec, original, task)
    unedited = bench.measure(spec, original, task)
    rows, records = [["original (no edit)", "–", "–", *_metrics(unedited, columns), "–", "–"]], []
    for name in args.candidates:
        fields = dict(CANDIDATES[name])
        if fields.get("method") == "retrain":
            fields["training"] = scale.training()
        engine = fields.pop(ENGINE, {})
        row = bench.Row(name, fields.get("method", "gif"), name, fields)
        with engine_constants(engine):
            record = bench.run_row(row, task, spec, original)
        if "error" in record:
            rows.append([name, record["error"], "–", *["–"] * len(columns), "–",
                         f"{record['cpu_s']:.1f}"])
            continue
        details = record.get("details", {})
        chosen = (f"k={details['iterations']}, α={details['scale']:.3g}"
                  if "scale" in details else "–")
        if details.get("scaling") == "columns":  # preconditioner auto handed over and kept it
            chosen += ", scaled"
        objective = details.get("objective")
        hvps = details.get("hvps_all_solves") or details.get("hvps")  # every solve's, once
        rows.append([name, chosen, "–" if objective is None else f"{objective:.3f}",
                     *_metrics(record, columns), "–" if hvps is None else hvps,
                     f"{record['cpu_s']:.1f}"])
        records.append((len(rows) - 1, fields.get("method", "gif"), record))
        print(f"{name}: done ({record['cpu_s']:.1f} CPU s)", file=sys.stderr, flush=True)
    headers = ["request", "solver iterations, α", "validation objective", *columns.values(),
               "HVPs", "CPU s"]
    reference = next((record for _, method, record in records if method == "retrain"), None)
    if reference is not None:  # the benchmark's mean gap (bench.GAP_METRICS) to this retrain
        headers.append("mean gap to retrain")
        measured = {0: unedited, **{index: record for index, _, record in records}}
        rows = [[*row, f"{gap_to(bench, args.task, measured[index], reference):.3f}"
                 if index in measured else "–"] for index, row in enumerate(rows)]
    floor = "" if args.column_floor is None else f"; column floor {args.column_floor}"
    print(f"{bench.TASK_TITLES[args.task]}, {scale.describe()}{floor}\n")
    print(bench.markdown_table(headers, rows))
    return 0


def gap_to(bench, task: str, record: dict, reference: dict) -> float:
    """The benchmark's mean absolute gap of ``record``'s metrics to ``reference``'s."""
    return statistics.fmean(abs(record[key] - reference[key]) for key in bench.GAP_METRICS[task])


COLUMNS = {
    "class": {"removed": "removed-class test acc", "test": "other-class test acc",
              "retain": "retained-train acc", "forget": "forget acc"},
    "sample": {"forget": "forget acc", "test": "test acc", "retain": "retained-train acc",
               "mia": "MIA efficacy"},
    "backdoor": {"asr": "ASR", "test": "clean test acc", "retain": "retained-train acc",
                 "forget": "forget acc (label 4)"},
}
"""The metric columns of each task (``bench.measure``'s keys → headers)."""


def _metrics(record: dict, columns: dict[str, str]) -> list[str]:
    return [f"{record[key]:.3f}" for key in columns]


if __name__ == "__main__":
    raise SystemExit(main())
