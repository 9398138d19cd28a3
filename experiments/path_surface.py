"""The regularisation path's scored iterates (method.md E9) of one default-request edit on a
``bench/bench_unlearning.py`` task, optionally with another patience than the default.

Why: on the full-data TinyNet (``--scale full-tinynet``) the default GIF class removal stopped
at iteration 5 with α at the edge of its range and wrecked the model; this prints each scored
iterate's best α, objective and components, so the surface behind a choice can be read.

    python -m experiments.path_surface --scale full-tinynet --task class
    python -m experiments.path_surface --scale full-tinynet --task class --patience 50
    python -m experiments.path_surface --scale full-tinynet --task class \
        --overrides '{"solver": {"max_iter": 100}}'
    python -m experiments.path_surface --scale full-tinynet --task class --scan

``--scan`` scores every iterate on the whole range ``SCAN_SCALES`` (2^-6 … 2^20, no window)
and runs the solve to ``max_iter``: where each iterate's useful α lies, whatever the path
would have searched (docs/defaults.md, "The step's range").

Prints a markdown table, then the chosen (k, α) and the task's metrics (``bench.measure``).
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import torch

from experiments.candidates import load_bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="medium", help="a bench_unlearning scale")
    parser.add_argument("--task", default="class", choices=("class", "sample", "backdoor"))
    parser.add_argument("--patience", type=int, default=None,
                        help="solver iterations beyond 2·k_ref without a clear gain "
                             "before the path stops the solve (default: "
                             "gif.step.PATH_PATIENCE)")
    parser.add_argument("--overrides", type=json.loads, default={},
                        help="request fields on top of the default request, as JSON (e.g. "
                             "'{\"solver\": {\"max_iter\": 100}}'): what a variant would do")
    parser.add_argument("--scan", action="store_true",
                        help="score every iterate on 2^-6 … 2^20 in full (no pruning) and "
                             "solve to max_iter")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import gif.edit.run as edit_run
    import gif.step
    from gif.edit import LoadedModel, run_edit
    from gif.step import PATH_PATIENCE, RegularisationPath, search_scale

    scans = []  # (iteration, the whole-range curve) of every scored iterate, with --scan

    class ScanningPath(RegularisationPath):
        """The path as it is, plus every scored iterate on the whole of ``SCAN_SCALES``; it
        never stops the solve."""

        def observe(self, iteration, candidate):
            super().observe(iteration, candidate)  # the path's own bookkeeping and choice
            scans.append((iteration, search_scale(
                lambda alpha: self.apply_fn(candidate, alpha), self.objective_fn, SCAN_SCALES,
                refine_octaves=(), max_extra_octaves=0, known=self.iterates[-1].curve.points)))
            return False

    patience = PATH_PATIENCE if args.patience is None else args.patience
    bench = load_bench()
    scale = bench.SCALES[args.scale]
    spec = bench.TINYNET.spec
    task = next(t for t in bench.build_tasks(bench.TINYNET, scale, 0) if t.name == args.task)
    original, _ = bench.cached_original(spec, task.train, scale.training(), 0)
    request = bench.request_for(bench.Row("gif", "gif", "default request",
                                          {**dict(scale.influence_overrides), **args.overrides}),
                                task)
    default_path, default_pruning = edit_run.RegularisationPath, gif.step.PRUNING
    # --scan: every α of the range scored in full (a pruned point has no value to show)
    gif.step.PRUNING = default_pruning and not args.scan
    edit_run.RegularisationPath = functools.partial(
        ScanningPath if args.scan else RegularisationPath, patience=patience)
    try:
        started = time.process_time()
        outcome = run_edit(request, LoadedModel(spec=spec, state_dict=original), task.train, {})
        cpu = time.process_time() - started
    finally:
        edit_run.RegularisationPath, gif.step.PRUNING = default_path, default_pruning
    path = outcome.result["path"]
    components = sorted({key for it in path["iterates"] for key in it}
                        - {"iteration", "scale", "objective"})
    rows = [[str(it["iteration"]), f"{it['scale']:.3g}", f"{it['objective']:.4f}",
             *(f"{it.get(key, float('nan')):.3f}" for key in components)]
            for it in path["iterates"]]
    print(f"{bench.TASK_TITLES[args.task]}, {scale.describe()}; patience {patience}"
          + (f"; request overrides {json.dumps(args.overrides)}" if args.overrides else "")
          + "\n")
    print(bench.markdown_table(["iteration k", "best α", "objective", *components], rows))
    if args.scan:
        print("\nthe whole α range of every iterate (α where the objective is above 0.5):\n")
        print(bench.markdown_table(["iteration k", "α with objective > 0.5", "best α", "best"],
                                   [scan_row(k, curve) for k, curve in scans]))
    chosen = path["chosen"]
    metrics = bench.measure(spec, outcome.state_dict, task)
    print(f"\nchosen: k = {chosen['iteration']}, α = {chosen['scale']:.4g}; solver iterations "
          f"{outcome.result['solver']['iterations']}; {cpu:.1f} CPU s; metrics: "
          + ", ".join(f"{key} {value:.3f}" for key, value in metrics.items()))
    return 0


SCAN_SCALES = tuple(2.0**k for k in range(-6, 21))


def scan_row(iteration: int, curve) -> list[str]:
    """One iterate of ``--scan``: the range of α scoring above 0.5, and the best point."""
    good = [p.scale for p in curve.points if p.objective > 0.5]
    span = f"{min(good):,.4g}–{max(good):,.4g}" if good else "none"
    return [str(iteration), span, f"{curve.best.scale:,.4g}", f"{curve.best.objective:.3f}"]


if __name__ == "__main__":
    raise SystemExit(main())
