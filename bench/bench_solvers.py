"""HVPs and CPU seconds each solver needs to reach a normal-equation residual (method.md E7, E8).

    .venv/bin/python bench/bench_solvers.py [--method gif] [--train-size 10000]
        [--hessian-samples 64] [--edit-samples 64] [--ratio 0.1] [--targets 1e-2,1e-3]
        [--krylov-max-iter 150] [--neumann-max-iter 300] [--threads 1] [--damping 0]
        [--float64] [--no-old-sigma] [--power-check]

The problem: removing class 8 ("Bag") from TinyNet trained for one epoch on a seeded
Fashion-MNIST subset (weights cached under ``.cache/``), with a selection of ratio 0.1
(``gif.selection.select_parameters``, top-k outputs). ``--method`` picks the system: ``gif``
(E3, the rectangular ``H[:,S]``: LSQR, CG, Neumann), or one of the symmetric ones, ``fif``
(``H[S,S]``), ``pif`` (``H``), which MINRES (E8) also solves with one HVP per iteration. One
HVP object (``gif.hvp.make_hvp``) is shared by every solver, so all run on the same operator.

For each target the table gives the first iteration whose normal residual (``‖Aᵀ(Aδ − r)‖ /
‖Aᵀr‖``) is at or below it, the HVPs spent by then (Neumann's power iterations included) and
the process CPU seconds (one thread), with the HVP ratio against LSQR in the same run. A solver
that does not reach a target within its cap is shown as "not reached" with the HVPs it spent
(a lower bound on what it would need). The Neumann series runs with the engine's σ
(``σ² = NEUMANN_MARGIN · λ̂/2``) and, unless ``--no-old-sigma``, also with the σ the engine
used before (``σ² = 1.1 λ̂``), so the effect of that change is measured in the same run.

``--power-check`` measures instead how far 10 power iterations (``gif.solvers.normal_lambda_max``,
five seeds) fall short of ``λ_max(AᵀA)`` on the gif, fif and pif operators of this problem, the
reference being ARPACK's Lanczos (``scipy.sparse.linalg.eigsh``): the evidence behind
``gif.solvers.NEUMANN_MARGIN``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gif.data import load_dataset, prepare_inputs
from gif.hvp import make_hvp, mean_loss_grad
from gif.methods import method_operator, method_rhs, removal_rhs
from gif.params import ParamSpace
from gif.registry import build_model
from gif.solvers import NEUMANN_MARGIN, normal_lambda_max, solve
from gif.spec import ModelSpec

SPEC = ModelSpec(
    arch="tinynet",
    arch_kwargs={"in_channels": 1, "num_classes": 10},
    input={"scale": 1 / 255, "mean": [0.2860], "std": [0.3530]},
)
REMOVED_CLASS = 8
CACHE = Path(".cache")
OLD_SAFETY = 1.1  # σ² = 1.1 λ̂: the engine's rule before E7's bound σ² > λ_max/2 was used
POWER_ITERATIONS = 10


def trained_tinynet(x: torch.Tensor, y: torch.Tensor, *, seed: int) -> torch.nn.Module:
    """TinyNet after one epoch of Adam (batch 128); cached, and re-loaded with weights_only."""
    path = CACHE / f"bench_solvers_tinynet_n{len(y)}_s{seed}.pt"
    model = build_model(SPEC)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    torch.manual_seed(seed)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for batch in torch.randperm(len(y), generator=generator).split(128):
        optimizer.zero_grad()
        F.cross_entropy(model(x[batch]), y[batch]).backward()
        optimizer.step()
    CACHE.mkdir(exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def selected_indices(model, space: ParamSpace, x_forget, y_forget, ratio: float, seed: int):
    """Top-k-outputs selection (paper §4) of ``gif.selection``."""
    from gif.selection import select_parameters

    selection = select_parameters(
        model,
        x_forget,
        y_forget,
        criterion="topk_outputs",
        ratio=ratio,
        seed=seed,
        batch_size=256,
    )
    return space.indices(selection.masks)


def cpu_clock(name: str, history: list[float]):
    """A solver callback that records the process CPU time of each iteration and shows the run
    is alive (stderr, every 10 iterations)."""
    start = time.process_time()

    def record(info: dict) -> None:
        history.append(time.process_time() - start)
        if info["iteration"] % 10 == 0:
            print(
                f"  {name}: iteration {info['iteration']}/{info['max_iter']}, normal "
                f"residual {info['normal_residual']:.2e}, {info['hvps']} HVPs",
                file=sys.stderr,
                flush=True,
            )

    return record


def best_within(history: list[dict], budget: int) -> str:
    """The smallest normal residual among iterations that spent at most ``budget`` HVPs."""
    values = [row["normal_residual"] for row in history if row["hvps"] <= budget]
    return f"{min(values):.2e}" if values else "–"


def first_reaching(history: list[dict], target: float) -> dict | None:
    for row in history:
        if row["normal_residual"] <= target:
            return row
    return None


def build_problem(args):
    """TinyNet, its selection, the removal rhs and the shared HVP (see the module docstring)."""
    train = load_dataset("builtin:fashion-mnist:train")
    rng = np.random.default_rng(args.seed)
    subset = torch.as_tensor(np.sort(rng.choice(train.num_samples, args.train_size, replace=False)))
    x = prepare_inputs(train.x[subset], SPEC.input, flat=False)
    y = train.y[subset]
    start = time.perf_counter()
    model = trained_tinynet(x, y, seed=args.seed)
    train_seconds = time.perf_counter() - start
    if args.float64:
        model, x = model.double(), x.double()
    forget = torch.nonzero(y == REMOVED_CLASS).reshape(-1)
    retain = torch.nonzero(y != REMOVED_CLASS).reshape(-1)
    generator = torch.Generator().manual_seed(args.seed)
    edit_idx = forget[torch.randperm(len(forget), generator=generator)[: args.edit_samples]]
    hess_idx = retain[torch.randperm(len(retain), generator=generator)[: args.hessian_samples]]
    space = ParamSpace.from_model(model)
    selected = selected_indices(model, space, x[edit_idx], y[edit_idx], args.ratio, args.seed)
    b = removal_rhs(mean_loss_grad(model, x[edit_idx], y[edit_idx]), len(forget), len(y))
    hvp = make_hvp(model, x[hess_idx], y[hess_idx], batch_size=256)
    print(
        f"TinyNet p={space.size:,}, |S|={selected.numel():,} (ratio {args.ratio}), "
        f"train subset {len(y)} (1 epoch, {train_seconds:.0f} s incl. cache), "
        f"H on {len(hess_idx)} retained points, b on {len(edit_idx)} of {len(forget)} "
        f"removed points, HVP mode {hvp.mode}, {x.dtype}, damping {args.damping}, "
        f"threads {args.threads}, torch {torch.__version__}"
    )
    return space, selected, b, hvp


def power_check(space, selected, b, hvp, seeds=range(5)) -> None:
    """λ_max(AᵀA) by Lanczos vs 10 power iterations, for the gif, fif and pif operators."""
    from scipy.sparse.linalg import LinearOperator as ScipyOperator
    from scipy.sparse.linalg import eigsh

    print(f"\nPower iteration ({POWER_ITERATIONS} iterations) vs λ_max(AᵀA) (ARPACK eigsh):\n")
    print("| operator | λ_max (Lanczos) | λ̂ per seed | worst λ_max / λ̂ | Lanczos HVPs |")
    print("|---|---:|---|---:|---:|")
    worst_overall = 1.0
    for method in ("gif", "fif", "pif"):
        operator = method_operator(method, hvp, selected, space.size)
        n = operator.shape[1]

        def normal(vector, operator=operator):
            as_tensor = torch.as_tensor(np.asarray(vector).reshape(-1), dtype=b.dtype)
            return operator.rmatvec(operator.matvec(as_tensor)).double().numpy()

        start_hvps = operator.hvps
        v0 = np.random.default_rng(123).standard_normal(n)
        reference = float(
            eigsh(
                ScipyOperator((n, n), matvec=normal, dtype=np.float64),
                k=1, which="LA", tol=1e-6, v0=v0, return_eigenvectors=False,
            )[0]
        )
        lanczos_hvps = operator.hvps - start_hvps
        estimates = [
            normal_lambda_max(operator, iterations=POWER_ITERATIONS, seed=seed, like=b)
            for seed in seeds
        ]
        worst = reference / min(estimates)
        worst_overall = max(worst_overall, worst)
        cells = ", ".join(f"{e:.4g}" for e in estimates)
        print(f"| {method} | {reference:.4g} | {cells} | {worst:.4f} | {lanczos_hvps} |")
    print(
        f"\nworst shortfall λ_max/λ̂ = {worst_overall:.4f}; the engine's margin "
        f"NEUMANN_MARGIN = {NEUMANN_MARGIN} puts σ² = {NEUMANN_MARGIN / 2:.3f} λ̂, i.e. "
        f"λ_max/σ² ≤ {2 * worst_overall / NEUMANN_MARGIN:.3f} (< 2 converges)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", choices=("gif", "fif", "pif"), default="gif")
    parser.add_argument("--train-size", type=int, default=10_000)
    parser.add_argument("--hessian-samples", type=int, default=64)
    parser.add_argument("--edit-samples", type=int, default=64)
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--targets", default="1e-2,1e-3")
    parser.add_argument("--krylov-max-iter", type=int, default=150)
    parser.add_argument("--neumann-max-iter", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--damping", type=float, default=0.0,
                        help="relative Tikhonov damping of E8 (solver.damping; all solvers)")
    parser.add_argument("--float64", action="store_true", help="solve in float64 (model and data)")
    parser.add_argument("--no-old-sigma", action="store_true",
                        help="skip the Neumann run with the old σ² = 1.1 λ̂")
    parser.add_argument("--power-check", action="store_true",
                        help="measure the power iteration's shortfall instead of solving")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    targets = sorted((float(t) for t in args.targets.split(",")), reverse=True)
    space, selected, b, hvp = build_problem(args)
    if args.power_check:
        power_check(space, selected, b, hvp)
        return

    rhs = method_rhs(args.method, b, selected)
    runs = {"lsqr": ("lsqr", {}), "cg": ("cg", {})}
    if args.method != "gif":
        runs["minres"] = ("minres", {})
    runs["neumann"] = ("neumann", {})
    if not args.no_old_sigma:
        runs["neumann, old σ² = 1.1 λ̂"] = ("neumann", {"safety": OLD_SAFETY})
    results, cpu = {}, {}
    for name, (algorithm, options) in runs.items():
        operator = method_operator(args.method, hvp, selected, space.size)
        cap = args.neumann_max_iter if algorithm == "neumann" else args.krylov_max_iter
        if args.damping > 0:
            options = {**options, "relative_damp": args.damping}
        cpu[name] = []
        results[name] = solve(
            algorithm, operator, rhs, tol=min(targets), max_iter=cap,
            callback=cpu_clock(name, cpu[name]), **options,
        )

    for name, result in results.items():
        extra = result.extra
        sigma = f", σ = {extra['sigma']:.4g} (λ̂ = {extra['lambda_max_estimate']:.4g})" if (
            "sigma" in extra) else ""
        print(f"{name}: stop {result.stop_reason} after {result.iterations} iterations, "
              f"{result.hvps} HVPs{sigma}")
    print()
    print("| target normal residual | solver | iterations | HVPs | CPU s | HVPs / LSQR's |")
    print("|---:|---|---:|---:|---:|---:|")
    for target in targets:
        reference = first_reaching(results["lsqr"].history, target)
        for name, result in results.items():
            row = first_reaching(result.history, target)
            if row is None:
                bound = f"> {result.hvps / reference['hvps']:.1f}" if reference else ""
                print(
                    f"| {target:g} | {name} | not reached in {result.iterations} | "
                    f"> {result.hvps} | {cpu[name][-1]:.1f} | {bound} |"
                )
                continue
            ratio = f"{row['hvps'] / reference['hvps']:.1f}" if reference else ""
            print(
                f"| {target:g} | {name} | {row['iteration']} | {row['hvps']} | "
                f"{cpu[name][row['iteration'] - 1]:.1f} | {ratio} |"
            )
    print()
    print("| HVP budget | " + " | ".join(results) + " |")
    print("|---:|" + "---:|" * len(results))
    largest = max(result.hvps for result in results.values())
    for budget in (b for b in (25, 50, 100, 200, 400, 800, 1600) if b <= largest):
        cells = [best_within(result.history, budget) for result in results.values()]
        print(f"| {budget} | " + " | ".join(cells) + " |")
    lsqr_x = results["lsqr"].x
    for name, result in results.items():
        if name != "lsqr":
            difference = float((result.x - lsqr_x).norm() / lsqr_x.norm())
            print(f"\n‖δ_{name} − δ_lsqr‖ / ‖δ_lsqr‖ = {difference:.2e}", end="")
    print()


if __name__ == "__main__":
    main()
