"""PNG figures drawn from an edit's ``result`` dict (API.md job ``result``).

Each function takes the result (or its relevant part) and returns PNG bytes, so the service
can serve ``/v1/jobs/{id}/plots/{name}.png`` straight from the stored result and the CLI can
write files. The Agg backend is used through an explicit ``Figure`` (never ``pyplot``), so no
display is needed and no global figure state is shared between threads.
"""

from __future__ import annotations

import io
from collections.abc import Callable

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


class MissingPlotData(ValueError):
    """The result has nothing to draw for this plot (e.g. a failed job or an older result)."""


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _require(mapping: dict, *keys: str):
    node = mapping
    for key in keys:
        if not isinstance(node, dict) or node.get(key) is None:
            raise MissingPlotData(f"result has no {'.'.join(keys)}")
        node = node[key]
    return node


def plot_convergence(result: dict) -> bytes:
    """Solver residual ``‖H[:,S]δ + b‖/‖b‖`` and normal residual per iteration (E8), log y."""
    history = _require(result, "solver", "history")
    if not history:
        raise MissingPlotData("result has an empty solver.history")
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    iterations = [entry["iteration"] for entry in history]
    for key, label in (("residual", "residual ‖H[:,S]δ+b‖/‖b‖"),
                       ("normal_residual", "normal residual")):
        values = [entry.get(key) for entry in history]
        if any(v is not None and v > 0 for v in values):
            points = [(i, v) for i, v in zip(iterations, values, strict=True) if v and v > 0]
            axes.plot(*zip(*points, strict=True), marker=".", label=label)
    axes.set_yscale("log")
    axes.set_xlabel("iteration")
    axes.set_ylabel("relative residual")
    algorithm = result["solver"].get("algorithm", "")
    axes.set_title(f"Solver convergence ({algorithm})")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    return _png(figure)


def plot_scale_curve(result: dict) -> bytes:
    """The E9 step curve: objective (and its components) against ``α``, chosen ``α`` marked."""
    curve = _require(result, "step", "curve")
    if not curve:
        raise MissingPlotData("result has an empty step.curve")
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    scales = [point["scale"] for point in curve]
    component_keys = [k for k in curve[0] if k not in ("scale",)]
    for key in component_keys:
        values = [point.get(key) for point in curve]
        style = {"linewidth": 2.5} if key == "objective" else {"linestyle": "--"}
        axes.plot(scales, values, marker="o", label=key, **style)
    if result.get("scale") is not None:
        chosen = f"chosen α={result['scale']:g}"
        axes.axvline(result["scale"], color="black", alpha=0.5, label=chosen)
    axes.set_xscale("log")
    axes.set_xlabel("step scale α")
    axes.set_ylabel("validation value")
    axes.set_title(f"Step-size search ({result['step'].get('mode', '')})")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    return _png(figure)


def plot_per_class(result: dict) -> bytes:
    """Per-class accuracy before and after the edit, one panel per evaluated set."""
    before = _require(result, "metrics", "before")
    after = _require(result, "metrics", "after")
    names = [
        name for name, value in after.items()
        if isinstance(value, dict) and "per_class_accuracy" in value and name in before
    ]
    if not names:
        raise MissingPlotData("result has no per-class accuracies")
    figure = Figure(figsize=(6, 2.6 * len(names)))
    for row, name in enumerate(names, start=1):
        axes = figure.add_subplot(len(names), 1, row)
        classes = range(len(after[name]["per_class_accuracy"]))
        width = 0.4
        for shift, label, values in ((-width / 2, "before", before[name]["per_class_accuracy"]),
                                     (width / 2, "after", after[name]["per_class_accuracy"])):
            heights = [v if v is not None else 0.0 for v in values]
            axes.bar([c + shift for c in classes], heights, width=width, label=label)
        axes.set_xticks(list(classes))
        axes.set_ylim(0, 1.05)
        axes.set_ylabel("accuracy")
        axes.set_title(name)
        axes.legend(fontsize="small", loc="lower right")
    axes.set_xlabel("class")
    figure.tight_layout()
    return _png(figure)


def plot_per_layer(result: dict) -> bytes:
    """Share of parameters changed and update norm per layer (paper §4 selection)."""
    layers = _require(result, "selection", "per_layer")
    if not layers:
        raise MissingPlotData("result has an empty selection.per_layer")
    names = [layer["name"] or "(model)" for layer in layers]  # "": a one-layer model
    figure = Figure(figsize=(max(6, 0.6 * len(names)), 5))
    share_axes = figure.add_subplot(2, 1, 1)
    share_axes.bar(names, [layer.get("ratio", 0.0) for layer in layers])
    share_axes.set_ylabel("share of parameters changed")
    share_axes.set_title("Parameters moved per layer")
    norm_axes = figure.add_subplot(2, 1, 2)
    norm_axes.bar(names, [layer.get("update_norm", 0.0) for layer in layers], color="tab:orange")
    norm_axes.set_ylabel("‖α Δ‖₂")
    for axes in (share_axes, norm_axes):
        axes.tick_params(axis="x", labelrotation=60, labelsize="small")
    figure.tight_layout()
    return _png(figure)


PLOTS: dict[str, Callable[[dict], bytes]] = {
    "convergence": plot_convergence,
    "scale": plot_scale_curve,
    "per_class": plot_per_class,
    "per_layer": plot_per_layer,
}
