"""HVPs and seconds each solver needs to reach a normal-equation residual (MATH.md E7, E8).

    .venv/bin/python bench/bench_solvers.py [--train-size 10000] [--hessian-samples 64]
        [--edit-samples 64] [--ratio 0.1] [--targets 1e-2,1e-3] [--krylov-max-iter 150]
        [--neumann-max-iter 300] [--threads 2] [--damping 0] [--float64]

The problem: GIF (E3) removing class 8 ("Bag") from TinyNet trained for one epoch on a seeded
Fashion-MNIST subset (weights cached under ``.cache/``), with a selection of ratio 0.1
(``gif.selection.select_parameters``, top-k outputs). One HVP object (``gif.hvp.make_hvp``) is
shared by every solver, so all run on the same operator. For each target the table gives the first
iteration whose normal residual ``‖H[:,S]ᵀ(H[:,S]δ + b)‖ / ‖H[:,S]ᵀ b‖`` is at or below it, the
HVPs spent by then (Neumann's power iterations included) and the wall time, with the HVP ratio
against LSQR in the same run. A solver that does not reach a target within its iteration cap
is shown as "not reached" with the HVPs it spent (a lower bound on what it would need).
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
from gif.solvers import solve
from gif.spec import ModelSpec

SPEC = ModelSpec(
    arch="tinynet",
    arch_kwargs={"in_channels": 1, "num_classes": 10},
    input={"scale": 1 / 255, "mean": [0.2860], "std": [0.3530]},
)
REMOVED_CLASS = 8
CACHE = Path(".cache")


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


def progress(algorithm: str):
    """A solver callback that shows the run is alive (stderr, every 10 iterations)."""

    def report(info: dict) -> None:
        if info["iteration"] % 10 == 0:
            print(
                f"  {algorithm}: iteration {info['iteration']}/{info['max_iter']}, normal "
                f"residual {info['normal_residual']:.2e}, {info['hvps']} HVPs",
                file=sys.stderr,
                flush=True,
            )

    return report


def best_within(history: list[dict], budget: int) -> str:
    """The smallest normal residual among iterations that spent at most ``budget`` HVPs."""
    values = [row["normal_residual"] for row in history if row["hvps"] <= budget]
    return f"{min(values):.2e}" if values else "–"


def first_reaching(history: list[dict], target: float) -> dict | None:
    for row in history:
        if row["normal_residual"] <= target:
            return row
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-size", type=int, default=10_000)
    parser.add_argument("--hessian-samples", type=int, default=64)
    parser.add_argument("--edit-samples", type=int, default=64)
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--targets", default="1e-2,1e-3")
    parser.add_argument("--krylov-max-iter", type=int, default=150)
    parser.add_argument("--neumann-max-iter", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--damping", type=float, default=0.0, help="Tikhonov λ of E8 (all solvers)")
    parser.add_argument("--float64", action="store_true", help="solve in float64 (model and data)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    targets = sorted((float(t) for t in args.targets.split(",")), reverse=True)

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
    rhs = method_rhs("gif", b, selected)

    caps = {
        "lsqr": args.krylov_max_iter,
        "cg": args.krylov_max_iter,
        "neumann": args.neumann_max_iter,
    }
    results = {}
    for algorithm, cap in caps.items():
        operator = method_operator("gif", hvp, selected, space.size)
        results[algorithm] = solve(
            algorithm,
            operator,
            rhs,
            damp=args.damping,
            tol=min(targets),
            max_iter=cap,
            callback=progress(algorithm),
        )

    print(
        f"TinyNet p={space.size:,}, |S|={selected.numel():,} (ratio {args.ratio}), "
        f"train subset {len(y)} (1 epoch, {train_seconds:.0f} s incl. cache), "
        f"H on {len(hess_idx)} retained points, b on {len(edit_idx)} of {len(forget)} "
        f"removed points, HVP mode {hvp.mode}, {x.dtype}, damping {args.damping}, "
        f"threads {args.threads}, torch {torch.__version__}"
    )
    neumann = results["neumann"]
    print(
        f"Neumann: σ = {neumann.extra['sigma']:.4g} from {2 * 10} power-iteration HVPs; "
        f"stop: {neumann.stop_reason}"
    )
    print()
    print("| target normal residual | solver | iterations | HVPs | seconds | HVPs / LSQR's |")
    print("|---:|---|---:|---:|---:|---:|")
    for target in targets:
        reference = first_reaching(results["lsqr"].history, target)
        for algorithm, result in results.items():
            row = first_reaching(result.history, target)
            if row is None:
                bound = f"> {result.hvps / reference['hvps']:.1f}" if reference else ""
                print(
                    f"| {target:g} | {algorithm} | not reached in {result.iterations} | "
                    f"> {result.hvps} | {result.seconds:.1f} | {bound} |"
                )
                continue
            ratio = f"{row['hvps'] / reference['hvps']:.1f}" if reference else ""
            print(
                f"| {target:g} | {algorithm} | {row['iteration']} | {row['hvps']} | "
                f"{row['seconds']:.1f} | {ratio} |"
            )
    print()
    print("| HVP budget | " + " | ".join(f"best normal residual, {a}" for a in results) + " |")
    print("|---:|" + "---:|" * len(results))
    largest = max(result.hvps for result in results.values())
    for budget in (b for b in (25, 50, 100, 200, 400, 800, 1600) if b <= largest):
        cells = [best_within(result.history, budget) for result in results.values()]
        print(f"| {budget} | " + " | ".join(cells) + " |")
    lsqr_x = results["lsqr"].x
    for algorithm in ("cg", "neumann"):
        other = results[algorithm].x
        difference = float((other - lsqr_x).norm() / lsqr_x.norm())
        print(f"\n‖δ_{algorithm} − δ_lsqr‖ / ‖δ_lsqr‖ = {difference:.2e}", end="")
    print()


if __name__ == "__main__":
    main()
