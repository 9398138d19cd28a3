"""PNG figures of the experiments (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

REFERENCE_COLORS = ("black", "grey", "tab:brown", "tab:pink")


def _mean_std(records: list[dict], key: str) -> tuple[float, float]:
    values = [r[key] for r in records if r.get(key) is not None]
    if not values:
        return float("nan"), 0.0
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def line_panels(
    path: Path,
    *,
    x_values: list[float],
    x_label: str,
    panels: list[tuple[str, str]],
    series: dict[str, list[dict]],
    x_key: str,
    references: dict[str, list[dict]] | None = None,
    title: str = "",
) -> None:
    """One panel per (title, record key): a line per series over ``x_values`` (mean with a
    ±std error bar over seeds), and each reference (e.g. retraining) as a dashed horizontal line."""
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for axis, (panel_title, key) in zip(axes[0], panels, strict=True):
        for label, records in series.items():
            points = [(x, *_mean_std([r for r in records if r[x_key] == x], key))
                      for x in x_values]
            points = [p for p in points if p[1] == p[1]]  # drop NaN (no run at that x)
            if points:
                xs, means, stds = zip(*points, strict=True)
                axis.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label)
        for (label, records), color in zip((references or {}).items(), REFERENCE_COLORS,
                                           strict=False):
            mean, _ = _mean_std(records, key)
            if mean == mean:  # a reference without runs (NaN) draws nothing
                axis.axhline(mean, linestyle="--", color=color, linewidth=1.2, label=label)
        axis.set_title(panel_title, fontsize=10)
        axis.set_xlabel(x_label)
        axis.set_xticks(x_values)
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def convergence(path: Path, curves: dict[str, list[dict]], *, title: str) -> None:
    """Relative residual and normal-equation residual against the HVP count (log y), one line
    per solver; ``curves`` maps a solver to its per-iteration history (E8 diagnostics)."""
    figure, axes = plt.subplots(1, 2, figsize=(10.5, 3.9))
    for label, history in curves.items():
        hvps = [h["hvps"] for h in history]
        axes[0].semilogy(hvps, [h["residual"] for h in history], label=label)
        axes[1].semilogy(hvps, [h["normal_residual"] for h in history], label=label)
    axes[0].set_title("‖H[:,S]δ + b‖ / ‖b‖", fontsize=10)
    axes[1].set_title("‖H[:,S]ᵀ(H[:,S]δ + b)‖ / ‖H[:,S]ᵀb‖", fontsize=10)
    for axis in axes:
        axis.set_xlabel("Hessian-vector products")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
