"""PNG figures drawn from an edit's ``result`` dict (api.md job ``result``), and their registry.

``PLOTS`` maps a figure's name to a :class:`Plot`: its caption, a ``has_data`` predicate (does
this result hold what the figure draws?) and the draw function. The service's report page and
its ``/v1/jobs/{id}/plots/{name}.png`` route, and the CLI's ``--plots`` directory, all iterate
this one registry, so a new figure is one ``@register_plot`` away from every place that shows
figures. Calling a ``Plot`` draws it, or raises :class:`MissingPlotData` when the result has
nothing for it (a failed job, a training method's result for a solver figure, an older result).

Figures read optional ``result["class_names"]`` (label i is name i; ``gif.data`` knows those of
the built-in datasets) to label classes; without it, class indices are shown.

The Agg backend is used through an explicit ``Figure`` (never ``pyplot``), so no display is
needed and no global figure state is shared between threads. Positions on categorical axes
are numbers with tick labels, never strings: matplotlib's category converter would log an INFO
line per figure for names like ``"0"`` or ``"fc1"``. User strings (set and layer names) are
drawn with ``parse_math=False``: a ``$`` in a name is text, not mathtext.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

BEFORE_COLOUR, AFTER_COLOUR = "#8da0cb", "#1a5fb4"
CHANGED_COLOUR, TOTAL_COLOUR, NORM_COLOUR = "#1a5fb4", "#d8dde6", "tab:orange"
MAX_COUNT_LABELS = 12  # per-layer counts are written on the bars up to this many layers


class MissingPlotData(ValueError):
    """The result has nothing to draw for this plot (e.g. a failed job or an older result)."""


@dataclass(frozen=True)
class Plot:
    """One registered figure: ``draw(result) -> PNG bytes``, run only when ``has_data(result)``."""

    name: str
    caption: str
    draw: Callable[[dict], bytes]
    has_data: Callable[[dict], bool]

    def __call__(self, result: dict) -> bytes:
        """The figure as PNG bytes; :class:`MissingPlotData` when the result has no data for it."""
        if not self.has_data(result):
            raise MissingPlotData(f"result has no data for the {self.name!r} figure")
        return self.draw(result)


# Every figure, in the order pages show them. Add one with ``@register_plot``.
PLOTS: dict[str, Plot] = {}


def register_plot(name: str, caption: str, has_data: Callable[[dict], bool]):
    """Decorator: register ``draw`` as figure ``name`` (URL ``plots/{name}.png``) with the
    caption pages show under it and the predicate saying whether a result can be drawn."""

    def register(draw: Callable[[dict], bytes]) -> Callable[[dict], bytes]:
        PLOTS[name] = Plot(name=name, caption=caption, draw=draw, has_data=has_data)
        return draw

    return register


def _get(mapping, *keys: str):
    """``mapping[k1][k2]…``, or None where a level is missing or not a dict."""
    node = mapping
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _non_empty_list(*keys: str) -> Callable[[dict], bool]:
    """A ``has_data`` predicate: the value at ``keys`` is a non-empty list."""
    return lambda result: isinstance(_get(result, *keys), list) and bool(_get(result, *keys))


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _pruned(points: list[dict]) -> list[dict]:
    """The points of a step curve or path surface whose scoring stopped below the best
    (gif.step): their ``objective_bound`` is an upper bound, drawn as one, never as a value."""
    return [point for point in points
            if point.get("pruned") and _is_number(point.get("objective_bound"))]


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _category_ticks(axes, labels: Sequence[str]) -> None:
    """Label the positions 0..n-1 of ``axes``' x axis; long labels are slanted to fit."""
    slanted = len(labels) > 4 and max((len(label) for label in labels), default=0) > 3
    axes.set_xticks(range(len(labels)), labels=list(labels), parse_math=False,
                    rotation=35 if slanted else 0, ha="right" if slanted else "center",
                    rotation_mode="anchor" if slanted else "default")


# --------------------------------------------------------------------------- the figures


@register_plot(
    "convergence",
    "Solver convergence: relative residual and normal-equation residual per iteration "
    "(method.md E7/E8).",
    _non_empty_list("solver", "history"),
)
def plot_convergence(result: dict) -> bytes:
    """Solver residual ``‖H[:,S]δ + b‖/‖b‖`` and normal residual per iteration (E8), log y."""
    history = result["solver"]["history"]
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    iterations = [entry["iteration"] for entry in history]
    for key, label in (("residual", "residual ‖H[:,S]δ+b‖/‖b‖"),
                       ("normal_residual", "normal residual")):
        points = [(i, entry.get(key)) for i, entry in zip(iterations, history, strict=True)
                  if _is_number(entry.get(key)) and entry[key] > 0]
        if points:
            axes.plot(*zip(*points, strict=True), marker=".", label=label)
    axes.set_yscale("log")
    axes.set_xlabel("iteration")
    axes.set_ylabel("relative residual")
    algorithm = result["solver"].get("algorithm", "")
    axes.set_title(f"Solver convergence ({algorithm})", parse_math=False)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    return _png(figure)


@register_plot(
    "scale",
    "Step-size search on the held-out validation split: objective against the step scale α "
    "(method.md E9).",
    lambda result: _non_empty_list("step", "curve")(result) and any(
        _is_number(point.get("objective")) for point in result["step"]["curve"]
        if isinstance(point, dict)),  # a fixed step scores nothing
)
def plot_scale_curve(result: dict) -> bytes:
    """The E9 step curve: objective (and its components) against ``α``, chosen ``α`` marked.
    A pruned α (its scoring stopped once the objective was proven below the best's, gif.step)
    is drawn as a downward triangle at its upper bound — "at most this" — not on the line."""
    curve = [point for point in result["step"]["curve"] if isinstance(point, dict)]
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    scored = [point for point in curve if not point.get("pruned")]
    keys = [key for key in dict.fromkeys(k for point in scored for k in point) if key != "scale"]
    for key in keys:
        points = [point for point in scored if _is_number(point.get(key))]
        style = {"linewidth": 2.5} if key == "objective" else {"linestyle": "--"}
        axes.plot([point["scale"] for point in points], [point[key] for point in points],
                  marker="o", label=key.replace("_", " "), **style)
    pruned = _pruned(curve)
    if pruned:
        axes.scatter([point["scale"] for point in pruned],
                     [point["objective_bound"] for point in pruned], marker="v",
                     facecolors="none", edgecolors="black",
                     label="pruned: objective at most this")
    if _is_number(result.get("scale")):
        axes.axvline(result["scale"], color="black", alpha=0.5,
                     label=f"chosen α={result['scale']:.3g}")
    axes.set_xscale("log")
    axes.set_xlabel("step scale α")
    axes.set_ylabel("validation value")
    axes.set_title(f"Step-size search ({result['step'].get('mode', '')})", parse_math=False)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    return _png(figure)


@register_plot(
    "path",
    "Regularisation path on the held-out validation split: the best objective of each solver "
    "iterate k over the step α, and that α; the chosen (k, α) is marked (method.md E9). With "
    "preconditioner auto, a solve not kept is drawn dashed beside it (method.md E8).",
    _non_empty_list("path", "iterates"),
)
def plot_path(result: dict) -> bytes:
    """E9's path: per iterate ``k`` the best validation objective (left) and its ``α`` (right,
    log), the objective of every scored ``(k, α)`` as faint dots, the chosen iterate marked."""
    path = result["path"]
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    rows = [row for row in path.get("surface") or [] if isinstance(row, dict)]
    surface = [row for row in rows if _is_number(row.get("objective"))]
    axes.scatter([row["iteration"] for row in surface], [row["objective"] for row in surface],
                 s=8, color=TOTAL_COLOUR, label="every (k, α) scored in full")
    pruned = _pruned(rows)
    if pruned:  # stopped once below the iterate's best: drawn at their bound, as "at most"
        axes.scatter([row["iteration"] for row in pruned],
                     [row["objective_bound"] for row in pruned], s=10, marker="v",
                     facecolors="none", edgecolors=TOTAL_COLOUR,
                     label="pruned (k, α): objective at most this")
    iterates = [row for row in path["iterates"] if _is_number(row.get("objective"))]
    ks = [row["iteration"] for row in iterates]
    kept, others = path_attempts(result)
    axes.plot(ks, [row["objective"] for row in iterates], marker="o", color=AFTER_COLOUR,
              linewidth=2, label="best over α" + (f" ({kept}, kept)" if kept else ""))
    for label, attempt_ks, objectives in others:
        axes.plot(attempt_ks, objectives, marker="x", linestyle="--", color="grey", label=label)
    if _is_number(path.get("baseline_objective")):
        axes.axhline(path["baseline_objective"], color="grey", linestyle=":",
                     label="unedited model")
    chosen = path.get("chosen") or {}
    if _is_number(chosen.get("iteration")):
        axes.axvline(chosen["iteration"], color="black", alpha=0.5,
                     label=f"chosen k={chosen['iteration']}, α={chosen.get('scale', 0):.3g}")
    axes.set_xlabel("solver iteration k")
    axes.set_ylabel("validation objective")
    scales = axes.twinx()
    scales.plot(ks, [row["scale"] for row in iterates], linestyle="--", color=NORM_COLOUR,
                label="best α")
    scales.set_yscale("log")
    scales.set_ylabel("best step scale α")
    axes.set_title("Regularisation path (iterates × step)")
    axes.grid(True, alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()
    extra_handles, extra_labels = scales.get_legend_handles_labels()
    axes.legend(handles + extra_handles, labels + extra_labels, fontsize="small")
    return _png(figure)


SCALING_NAMES = {"none": "unscaled", "columns": "column-scaled"}


def path_attempts(result: dict) -> tuple[str | None, list[tuple[str, list, list]]]:
    """For ``preconditioner: auto`` (method.md E8): the kept attempt's name, and for each attempt
    not kept its legend label, iterations and best objectives; ``(None, [])`` without a choice
    of scaling, or when only one attempt was solved."""
    scaling = _get(result, "solver", "scaling") or {}
    attempts = scaling.get("attempts") or []
    if len(attempts) < 2:
        return None, []
    chosen = scaling.get("chosen")
    others = []
    for attempt in attempts:
        if attempt.get("preconditioner") == chosen:
            continue
        rows = [row for row in attempt.get("iterates") or [] if _is_number(row.get("objective"))]
        name = SCALING_NAMES.get(attempt.get("preconditioner"), attempt.get("preconditioner"))
        best = attempt.get("objective")
        label = f"{name} attempt, not kept" + (f" (best {best:.3f})" if _is_number(best) else "")
        others.append((label, [row["iteration"] for row in rows],
                       [row["objective"] for row in rows]))
    return SCALING_NAMES.get(chosen, chosen), others


def _per_class_sets(result: dict) -> list[str]:
    """Names of the sets with per-class accuracies both before and after the edit."""
    before, after = _get(result, "metrics", "before"), _get(result, "metrics", "after")
    if not isinstance(before, dict) or not isinstance(after, dict):
        return []
    return [name for name, value in after.items()
            if isinstance(value, dict) and isinstance(value.get("per_class_accuracy"), list)
            and isinstance(before.get(name), dict)
            and isinstance(before[name].get("per_class_accuracy"), list)]


def class_labels(result: dict, count: int) -> list[str]:
    """Tick labels of ``count`` classes: ``result["class_names"]`` where it names each, else
    the indices."""
    names = result.get("class_names")
    if isinstance(names, list) and len(names) >= count:
        return [str(name) for name in names[:count]]
    return [str(index) for index in range(count)]


@register_plot(
    "per_class",
    "Per-class accuracy before and after the edit, per evaluated set (a class the set does "
    "not contain has no bars).",
    lambda result: bool(_per_class_sets(result)),
)
def plot_per_class(result: dict) -> bytes:
    """Per-class accuracy before and after the edit, one panel per evaluated set.

    Bars have an edge, so an accuracy of 0 shows as a line on the axis rather than as nothing;
    a class absent from a set (``None``) has no bar. The legend sits above the panels."""
    names = _per_class_sets(result)
    before, after = result["metrics"]["before"], result["metrics"]["after"]
    count = max(len(after[name]["per_class_accuracy"]) for name in names)
    labels = class_labels(result, count)
    figure = Figure(figsize=(max(6.0, 0.55 * count), 0.6 + 2.4 * len(names)),
                    layout="constrained")
    width = 0.4
    for row, name in enumerate(names, start=1):
        axes = figure.add_subplot(len(names), 1, row)
        for shift, label, colour, values in (
                (-width / 2, "before", BEFORE_COLOUR, before[name]["per_class_accuracy"]),
                (width / 2, "after", AFTER_COLOUR, after[name]["per_class_accuracy"])):
            shown = [(c, v) for c, v in enumerate(values) if _is_number(v)]
            axes.bar([c + shift for c, _ in shown], [v for _, v in shown], width=width,
                     label=label, color=colour, edgecolor=colour, linewidth=1.2)
        _category_ticks(axes, labels)
        axes.set_xlim(-0.6, count - 0.4)
        axes.set_ylim(-0.03, 1.05)
        axes.set_ylabel("accuracy")
        axes.set_title(name, parse_math=False, loc="left")
        axes.grid(True, axis="y", alpha=0.3)
    axes.set_xlabel("class")
    handles, legend_labels = figure.axes[0].get_legend_handles_labels()
    figure.legend(handles, legend_labels, loc="outside upper right", ncols=2,
                  fontsize="small", frameon=False)
    return _png(figure)


@register_plot(
    "per_layer",
    "Where the edit went: parameters changed out of each layer's total (log scale), and the "
    "norm of each layer's update ‖αΔ‖₂.",
    _non_empty_list("selection", "per_layer"),
)
def plot_per_layer(result: dict) -> bytes:
    """Parameters changed (of the layer's total) and update norm per layer (paper §4).

    The share changed is the same in every selected layer by design (method.md, parameter
    selection), so it goes in the title; the bars show counts, which differ."""
    layers = result["selection"]["per_layer"]
    names = [layer.get("name") or "(model)" for layer in layers]  # "": a one-layer model
    figure = Figure(figsize=(max(6.0, 0.6 * len(names)), 5.5), layout="constrained")
    count_axes = figure.add_subplot(2, 1, 1)
    positions = range(len(names))
    totals = [layer.get("num_parameters") or 0 for layer in layers]
    changed = [layer.get("num_selected") or 0 for layer in layers]
    count_axes.bar(positions, totals, color=TOTAL_COLOUR, label="parameters in the layer")
    bars = count_axes.bar(positions, changed, width=0.5, color=CHANGED_COLOUR, label="changed")
    if len(layers) <= MAX_COUNT_LABELS:
        count_axes.bar_label(bars, labels=[f"{c:,}" for c in changed], fontsize="x-small",
                             padding=2)
    if any(totals):
        count_axes.set_yscale("log")
    count_axes.set_ylabel("parameters")
    ratios = {round(layer["ratio"], 6) for layer in layers
              if _is_number(layer.get("ratio")) and layer["ratio"] > 0}
    share = f" (share {ratios.pop():.3g} in every changed layer)" if len(ratios) == 1 else ""
    count_axes.set_title(f"Parameters changed per layer{share}")
    figure.legend(loc="outside upper right", ncols=2, fontsize="small", frameon=False)
    norm_axes = figure.add_subplot(2, 1, 2, sharex=count_axes)
    norm_axes.bar(positions, [layer.get("update_norm") or 0.0 for layer in layers],
                  color=NORM_COLOUR)
    norm_axes.set_ylabel("‖α Δ‖₂")
    norm_axes.set_title("Update norm per layer")
    count_axes.tick_params(axis="x", labelbottom=False)
    _category_ticks(norm_axes, names)
    for axes in (count_axes, norm_axes):
        axes.grid(True, axis="y", alpha=0.3)
    return _png(figure)


def _loss_points(result: dict) -> list[tuple[float, float]]:
    """(step, loss) of ``training.loss_history`` (``gif.unlearning``: every step's loss, or
    means over windows of steps on long runs), finite values only."""
    history = _get(result, "training", "loss_history")
    if not isinstance(history, list):
        return []
    return [(entry["step"], entry["loss"]) for entry in history
            if isinstance(entry, dict) and _is_number(entry.get("step"))
            and _is_number(entry.get("loss"))]


@register_plot(
    "training",
    "Training loss per step of the method's training loop (means over windows of steps on "
    "long runs; method.md E10).",
    lambda result: bool(_loss_points(result)),
)
def plot_training(result: dict) -> bytes:
    """The loss curve of a training method (``training.loss_history``); log y when it spans
    more than a factor of 20."""
    steps, losses = zip(*_loss_points(result), strict=True)
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    axes.plot(steps, losses, marker="." if len(steps) < 60 else None, label="loss")
    if min(losses) > 0 and max(losses) > 20 * min(losses):
        axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("training loss")
    method = result.get("method") or ""
    axes.set_title(f"Training ({method})" if method else "Training", parse_math=False)
    axes.grid(True, which="both", alpha=0.3)
    return _png(figure)
