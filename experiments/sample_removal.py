"""Why sample removal misses retraining on the converged TinyNet (docs/defaults.md, "Sample
removal: what stands in the way").

On ``bench/bench_unlearning.py``'s sample task (a random 10 % of a class-balanced Fashion-MNIST
subset, ``--scale medium`` by default: TinyNet trained with Adam for 10 epochs) it measures the
two things a sample-removal edit depends on:

1. **The right-hand side (method.md E1).** E1's removal ``b = −ε ∇ mean_U L`` assumes
   ``∇R_D(θ̂) ≈ 0``. It prints the norms of the mean-loss gradients over all training points
   (``g_D``), the removed points (``g_U``), the retained ones (``g_r``), the part specific to the
   removed points (``g_U − g_r``: what ``∇R_new − ∇R_D`` is made of, ``(m/N)(g_r − g_U)``), the
   cosine of ``g_U`` with ``g_D``, and how far a retained-gradient estimate from a random sample
   of the Hessian sample's size (``hessian_samples``) lies from ``g_r``.
2. **What the E9 objective can see.** The two-sample KS statistic between the forgotten points'
   losses and non-member losses (the benchmark's holdout set) for the original model and for
   models retrained without the points (two seeds): the signal the objective has to find, beside
   KS between two disjoint halves of the holdout set (its noise).

    python -m experiments.sample_removal                 # ~3 CPU minutes at medium
    python -m experiments.sample_removal --scale small

Prints markdown tables. Nothing here is timed.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from experiments.candidates import load_bench


def gradient_parts(spec, task, state: dict, hessian_samples: int, seed: int) -> dict:
    """The norms and cosines of item 1, and ``identity``: ``‖g_D − (m/N) g_U − (1 − m/N) g_r‖
    / ‖g_D‖``, which the mean gradients satisfy exactly (a check of the decomposition)."""
    from gif.data import prepare_inputs
    from gif.hvp import mean_loss_grad
    from gif.registry import build_model

    model = build_model(spec)
    model.load_state_dict(state)
    x = prepare_inputs(task.train.x, spec.input, False)
    y = task.train.y.long()
    removed = np.zeros(len(y), dtype=bool)
    removed[np.asarray(task.edit["indices"])] = True
    m, n = int(removed.sum()), len(y)
    g_all = mean_loss_grad(model, x, y)
    g_u = mean_loss_grad(model, x[removed], y[removed])
    g_r = mean_loss_grad(model, x[~removed], y[~removed])
    rng = np.random.default_rng(seed)
    retained = np.flatnonzero(~removed)
    sample = rng.choice(retained, min(hessian_samples, len(retained)), replace=False)
    g_sample = mean_loss_grad(model, x[sample], y[sample])
    specific = g_u - g_r

    def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(a @ b / (a.norm() * b.norm()))

    return {"m": m, "n": n, "sample": len(sample), "g_all": float(g_all.norm()),
            "g_u": float(g_u.norm()), "g_r": float(g_r.norm()),
            "specific": float(specific.norm()), "cos_u_all": cosine(g_u, g_all),
            "sample_error": float((g_sample - g_r).norm()),
            "cos_specific_sample": cosine(specific, g_u - g_sample),
            "identity": float((g_all - (m / n) * g_u - (1 - m / n) * g_r).norm() / g_all.norm())}


def gradient_rows(parts: dict) -> list[list[str]]:
    """``gradient_parts`` as the rows ``[quantity, value]`` of the first table."""
    k = parts["sample"]
    return [
        ["removed points m, training points N", f"{parts['m']:,}, {parts['n']:,}"],
        ["‖g_D‖ (all training points: the original's residual gradient)", f"{parts['g_all']:.3f}"],
        ["‖g_U‖ (the removed points: E1's right-hand side ÷ ε)", f"{parts['g_u']:.3f}"],
        ["‖g_r‖ (the retained points)", f"{parts['g_r']:.3f}"],
        ["‖g_U − g_r‖ (what is specific to the removed points)", f"{parts['specific']:.3f}"],
        ["cos(g_U, g_D)", f"{parts['cos_u_all']:.3f}"],
        [f"‖ĝ_r − g_r‖, ĝ_r from {k} retained points", f"{parts['sample_error']:.3f}"],
        [f"cos(g_U − g_r, g_U − ĝ_r), ĝ_r from {k} retained points",
         f"{parts['cos_specific_sample']:.3f}"],
    ]


def loss_ks(spec, state: dict, forget, holdout) -> tuple[float, float, float]:
    """The forget accuracy, KS(losses of ``forget``, losses of ``holdout``) and KS between the
    losses of the two halves of ``holdout`` (the statistic's noise), one model, one pass each."""
    import torch.nn.functional as F
    from scipy.stats import ks_2samp

    from gif.metrics import predict_logits
    from gif.registry import build_model

    model = build_model(spec)
    model.load_state_dict(state)
    model.eval()

    def losses(pair) -> tuple[np.ndarray, float]:
        logits = predict_logits(model, pair[0], batch_size=512)
        loss = F.cross_entropy(logits.double(), pair[1].long(), reduction="none")
        return loss.numpy(), float((logits.argmax(1) == pair[1]).double().mean())

    forget_losses, forget_accuracy = losses(forget)
    holdout_losses, _ = losses(holdout)
    half = len(holdout_losses) // 2
    return (forget_accuracy, float(ks_2samp(forget_losses, holdout_losses).statistic),
            float(ks_2samp(holdout_losses[:half], holdout_losses[half:]).statistic))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="medium", help="a bench_unlearning scale")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from gif.data import prepare_inputs
    from gif.edit import LoadedModel, run_edit
    from gif.request import EditRequest, Solver

    bench = load_bench()
    scale = bench.SCALES[args.scale]
    spec = bench.TINYNET.spec
    task = next(t for t in bench.build_tasks(bench.TINYNET, scale, 0) if t.name == "sample")
    if task.holdout is None:
        parser.error(f"scale {args.scale!r} leaves no holdout set outside its test set")
    original, _ = bench.cached_original(spec, task.train, scale.training(), 0)
    hessian_samples = Solver().hessian_samples
    print(f"Sample removal, {scale.describe()}\n")
    parts = gradient_parts(spec, task, original, hessian_samples, 0)
    print(bench.markdown_table(["quantity", "value"], gradient_rows(parts)))

    holdout = (prepare_inputs(task.holdout.x, spec.input, False), task.holdout.y.long())
    models = {"original": original}
    for seed in (0, 1):
        request = EditRequest.model_validate({"edit": task.edit, "method": "retrain",
                                              "training": scale.training(), "seed": seed})
        outcome = run_edit(request, LoadedModel(spec=spec, state_dict=original), task.train, {})
        models[f"retrained, seed {seed}"] = outcome.state_dict
    rows = []
    for name, state in models.items():
        forget_accuracy, ks, noise = loss_ks(spec, state, task.forget, holdout)
        rows.append([name, f"{forget_accuracy:.3f}", f"{ks:.3f}", f"{noise:.3f}"])
    print()
    print(bench.markdown_table(
        ["model", "forget acc", "KS(forget, holdout losses)", "KS(holdout half, other half)"],
        rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
