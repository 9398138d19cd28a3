"""Solvers: residual against Hessian-vector products for LSQR (E8), CG on the normal
equations (E8) and the paper's scale-invariant Neumann series (E7), on the same GIF edit: the
backdoor recovery of ``experiments.backdoor`` (TinyNet, relabel the poisoned points, top-k
outputs at 10%). Each solver runs a fixed iteration budget with a tolerance it cannot reach,
so the whole convergence curve is recorded; the table gives the HVPs each needed to bring the
normal-equation residual below 1e-1, 1e-2 and 1e-3 (the least-squares system is inconsistent,
so the plain residual levels off above zero and the normal residual is the one that must vanish).

    python -m experiments.solvers [--quick] [--seeds N] [--out docs/results]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from experiments import backdoor
from experiments.common import (
    CACHE_DIR,
    add_common_arguments,
    after,
    edit,
    markdown_table,
    mean_std,
    write_outputs,
)
from experiments.plotting import convergence
from gif.errors import GifError

ALGORITHMS = ("lsqr", "cg", "neumann")
NAMES = {"lsqr": "LSQR", "cg": "CG (normal equations)", "neumann": "Neumann series (paper)"}
THRESHOLDS = (1e-1, 1e-2, 1e-3)
RATIO = 0.1
FULL_ITERATIONS = 40
QUICK_ITERATIONS = 30
UNREACHABLE_TOL = 1e-9


def hvps_to_reach(history: list[dict], threshold: float) -> int | None:
    """HVPs spent when the normal-equation residual first fell to ``threshold`` (None: never)."""
    for entry in history:
        if entry["normal_residual"] <= threshold:
            return int(entry["hvps"])
    return None


def run(*, quick: bool, seeds: int, out: Path, cache_dir: Path = CACHE_DIR) -> list[dict]:
    # quick: a smaller Hessian sample (the trained models are the backdoor's, shared via the cache)
    sizes = replace(backdoor.QUICK, hessian_samples=128) if quick else backdoor.FULL
    iterations = QUICK_ITERATIONS if quick else FULL_ITERATIONS
    started = time.perf_counter()
    records: list[dict] = []
    curves: dict[str, list[dict]] = {}

    def write() -> None:  # after every solve: a stopped run still leaves what it measured
        meta = {
            "command": command_line(quick, seeds, out),
            "sizes": sizes.describe() + f"; GIF, top-k outputs {RATIO:.0%}, "
                                        f"{iterations} iterations",
            "seeds": seeds,
            "seeds_done": len({r["seed"] for r in records}),
            "wall_seconds": time.perf_counter() - started,
        }
        write_outputs(out, "solvers", table(records), records, meta)
        convergence(out / "solvers.png", curves,
                    title=f"GIF solvers, backdoor relabel on TinyNet (ratio {RATIO:.0%}, seed 0)")

    for seed in range(seeds):
        setup = backdoor.prepare(sizes, seed, cache_dir)
        for algorithm in ALGORITHMS:
            request = backdoor.relabel_request(
                sizes, setup, method="gif", ratio=RATIO, seed=seed,
                algorithm=algorithm, max_iter=iterations, tol=UNREACHABLE_TOL,
            )
            record = {"algorithm": algorithm, "seed": seed}
            try:
                run_ = edit(request, backdoor.SPEC, setup.original.state_dict,
                            setup.poisoned_train, setup.eval_sets)
            except GifError as error:  # e.g. the series diverged: a finding, not a crash
                records.append({**record, "error": f"{error.code}: {error.message}"})
                print(f"seed {seed} {algorithm}: {error.code}", flush=True)
                write()
                continue
            solver = run_.result["solver"]
            history = solver["history"]
            if seed == 0:
                curves[NAMES[algorithm]] = history
            record.update(
                iterations=solver["iterations"], hvps=solver["hvps"],
                residual=solver["residual"], normal_residual=solver["normal_residual"],
                solve_seconds=solver["seconds"],
                asr=after(run_, "triggered_as_target")["accuracy"],
                test_acc=after(run_, "test")["accuracy"],
                **{f"hvps_to_{t:g}": hvps_to_reach(history, t) for t in THRESHOLDS},
            )
            records.append(record)
            print(f"seed {seed} {algorithm:8s} normal residual {record['normal_residual']:.2e} "
                  f"after {record['hvps']} HVPs", flush=True)
            write()
    write()
    return records


def command_line(quick: bool, seeds: int, out: Path) -> str:
    return "python -m experiments.solvers" + (" --quick" if quick else "") + \
        f" --seeds {seeds} --out {out}"


def table(records: list[dict]) -> str:
    header = ["solver", *[f"HVPs to normal residual ≤ {t:g}" for t in THRESHOLDS],
              "final residual", "final normal residual", "HVPs in total",
              "solve wall time [s] (shared machine)",
              "ASR after", "clean test acc after", "failed runs"]
    rows = []
    for algorithm in ALGORITHMS:
        group = [r for r in records if r["algorithm"] == algorithm and "error" not in r]
        failed = [r["error"] for r in records if r["algorithm"] == algorithm and "error" in r]
        reach = []
        for t in THRESHOLDS:
            values = [r[f"hvps_to_{t:g}"] for r in group]
            reached = [v for v in values if v is not None]
            cell = mean_std(reached, 0) if reached else "never"
            if reached and len(reached) < len(values):
                cell += f" ({len(reached)}/{len(values)} runs)"
            reach.append(cell)
        rows.append([NAMES[algorithm], *reach,
                     mean_std([r["residual"] for r in group], 4),
                     f"{_geo(group, 'normal_residual'):.1e}" if group else "–",
                     mean_std([r["hvps"] for r in group], 0),
                     mean_std([r["solve_seconds"] for r in group], 1),
                     mean_std([r["asr"] for r in group]), mean_std([r["test_acc"] for r in group]),
                     "; ".join(failed) or "0"])
    return markdown_table(header, rows)


def _geo(group: list[dict], key: str) -> float:
    """Geometric mean (residuals span decades)."""
    values = torch.tensor([max(r[key], 1e-300) for r in group], dtype=torch.float64)
    return float(values.log().mean().exp())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, default_seeds=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    run(quick=args.quick, seeds=args.seeds, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
