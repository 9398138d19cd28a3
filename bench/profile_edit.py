"""Where the CPU of one default edit goes: cProfile over a ``gif`` row of the unlearning benchmark.

    .venv/bin/python bench/profile_edit.py [--scale full-tinynet] [--task class] [--top 45]

Builds the scale's task as ``bench/bench_unlearning.py`` does (the same cached original under
``.cache/bench_unlearning``, trained on first use), warms up once, and runs the ``gif`` row at
the default request (its ``run_edit`` call) under cProfile on one torch thread. Printed: the
CPU seconds, the benchmark's metrics of the edited model, the kept solve's iterations and HVPs,
the engine's phase timings, each ``preconditioner: auto`` attempt's best validation objective
by iteration, how many α the step search scored and pruned and the points its objectives
scored (``--no-pruning``: every α in full, ``gif.step.PRUNING = False``), then the ``--top``
entries by cumulative time (HVPs: ``gif/hvp.py`` ``apply``; the
path's scoring: ``gif/step.py`` ``_curve``; the column norms: ``gif/solvers.py``
``column_norms``)."""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_unlearning as bench  # noqa: E402

from gif.edit import LoadedModel, run_edit  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(bench.SCALES), default="full-tinynet")
    parser.add_argument("--task", choices=bench.TASKS, default="class")
    parser.add_argument("--top", type=int, default=45)
    parser.add_argument("--no-pruning", action="store_true",
                        help="score every alpha of the step search in full")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    scale = bench.SCALES[args.scale]
    arch, seed = scale.archs[0], scale.seeds[0]
    task = next(t for t in bench.build_tasks(arch, scale, seed) if t.name == args.task)
    original, train_cpu = bench.cached_original(arch.spec, task.train, scale.training(), seed)
    print(f"original: {train_cpu:.1f} CPU s of training (cached)")
    bench.warm_up(arch.spec, original, task)
    row = next(r for r in bench.rows_for(task, scale, seed) if r.label == "gif")
    request = bench.request_for(row, task)
    profiler = cProfile.Profile()
    with counted_scoring(pruning=not args.no_pruning) as scoring:
        started = time.process_time()
        profiler.enable()
        outcome = run_edit(request, LoadedModel(spec=arch.spec, state_dict=original),
                           task.train, {})
        profiler.disable()
    print(f"CPU s of run_edit under the profiler: {time.process_time() - started:.1f}")
    metrics = bench.measure(arch.spec, outcome.state_dict, task)
    print({k: metrics[k] for k in ("forget", "test", "removed", "asr") if k in metrics})
    solver = outcome.result.get("solver", {})
    print(f"iterations {solver.get('iterations')}, HVPs {solver.get('hvps')}; timings "
          f"{outcome.result.get('timings')}")
    for attempt in (solver.get("scaling") or {}).get("attempts", []):
        scores = ", ".join(f"{row['iteration']}: {row['objective']:.3f}"
                           for row in attempt["iterates"])
        print(f"attempt {attempt['preconditioner']} ({attempt['hvps']} HVPs, handed over "
              f"{attempt['handed_over']}): best objective by iteration {scores}")
    print(f"step search: {scoring['alphas']} α scored, {scoring['pruned']} of them pruned; "
          f"{scoring['points']:,} points scored by their objectives")
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.top)
    return 0


@contextlib.contextmanager
def counted_scoring(pruning: bool):
    """Count the step search's α (``gif.step._evaluate``) and the points their objectives
    score (``gif.metrics.predict_logits`` inside them), with ``gif.step.PRUNING`` set."""
    import gif.metrics
    import gif.step

    counts = {"alphas": 0, "pruned": 0, "points": 0}
    evaluate, predict, saved_pruning = (gif.step._evaluate, gif.metrics.predict_logits,
                                        gif.step.PRUNING)
    scoring = False

    def counted_evaluate(*args, **kwargs):
        nonlocal scoring
        scoring = True
        try:
            point = evaluate(*args, **kwargs)
        finally:
            scoring = False
        counts["alphas"] += 1
        counts["pruned"] += point.pruned
        return point

    def counted_predict(model, x, *, batch_size):
        if scoring:
            counts["points"] += len(x)
        return predict(model, x, batch_size=batch_size)

    gif.step._evaluate, gif.metrics.predict_logits = counted_evaluate, counted_predict
    gif.step.PRUNING = pruning
    try:
        yield counts
    finally:
        gif.step._evaluate, gif.metrics.predict_logits = evaluate, predict
        gif.step.PRUNING = saved_pruning


if __name__ == "__main__":
    raise SystemExit(main())
