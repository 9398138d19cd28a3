"""The figure registry: each figure draws a decodable, non-blank PNG from the result shapes
that have its data (a GIF edit's, a training method's), says clearly when a result has none,
labels classes by name where the result knows them, and keeps matplotlib's logs quiet."""

from __future__ import annotations

import io
import logging

import matplotlib.image
import numpy as np
import pytest

from gif.builtins import BUILTIN_CLASS_NAMES, builtin_class_names
from gif.plots import PLOTS, MissingPlotData, Plot, class_labels, register_plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

RESULT = {
    "scale": 2.0,
    "step": {
        "mode": "auto",
        "curve": [
            {"scale": s, "objective": o, "forget_accuracy": f, "validation_accuracy": v}
            for s, o, f, v in [(0.5, 0.3, 0.8, 0.9), (1.0, 0.6, 0.5, 0.88), (2.0, 0.9, 0.05, 0.86)]
        ],
    },
    "selection": {
        "num_selected": 120,
        "ratio": 0.1,
        "per_layer": [  # Sequential layers are named "0", "2": strings parsable as numbers
            {"name": "0", "num_parameters": 320, "num_selected": 32, "ratio": 0.1,
             "update_norm": 0.3},
            {"name": "1", "num_parameters": 0, "num_selected": 0, "ratio": 0.0,
             "update_norm": 0.0},
            {"name": "2", "num_parameters": 880, "num_selected": 88, "ratio": 0.1,
             "update_norm": 1.2},
        ],
    },
    "solver": {
        "algorithm": "lsqr",
        "history": [
            {"iteration": i, "residual": 0.5**i, "normal_residual": 0.3**i} for i in range(1, 12)
        ],
    },
    "metrics": {
        "before": {"test": {"per_class_accuracy": [0.9, 0.8, None]},
                   "forget": {"per_class_accuracy": [None, 0.95, None]}},
        "after": {"test": {"per_class_accuracy": [0.88, 0.1, None]},
                  "forget": {"per_class_accuracy": [None, 0.0, None]}, "score": 0.9},
    },
}

# A training method's result (method.md E10): metrics and a training block, nothing of GIF's.
TRAINING_RESULT = {
    "method": "salun",
    "training": {"recipe": {"optimizer": "sgd", "lr": 0.013}, "steps": 29, "epochs_done": 1.0,
                 "stopped_by": "epochs", "epoch_losses": [0.8],
                 "loss_history": [{"step": s, "loss": 2.0 / s} for s in range(1, 30)]},
    "metrics": RESULT["metrics"],
}
GIF_FIGURES = {"convergence", "scale", "per_class", "per_layer"}


def _decoded(png: bytes) -> np.ndarray:
    assert png.startswith(PNG_SIGNATURE)
    return matplotlib.image.imread(io.BytesIO(png), format="png")


def _assert_not_blank(image: np.ndarray) -> None:
    """More than a few colours, and ink on a good part of the canvas."""
    rgb = (image[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    assert len(np.unique(rgb, axis=0)) > 20
    assert np.mean(np.any(rgb < 245, axis=1)) > 0.03


@pytest.mark.parametrize("name", sorted(GIF_FIGURES))
def test_each_gif_figure_is_a_readable_non_blank_png(name):
    assert PLOTS[name].has_data(RESULT)
    image = _decoded(PLOTS[name](RESULT))
    height, width = image.shape[:2]
    assert 200 <= width <= 3000 and 150 <= height <= 3000
    _assert_not_blank(image)


def test_the_registry_knows_which_figures_a_result_has_data_for():
    assert {name for name, plot in PLOTS.items() if plot.has_data(RESULT)} == GIF_FIGURES
    # A training method has per-class metrics and a loss curve, and no solver, step, selection.
    assert {name for name, plot in PLOTS.items() if plot.has_data(TRAINING_RESULT)} == {
        "per_class", "training"}
    _assert_not_blank(_decoded(PLOTS["training"](TRAINING_RESULT)))
    assert all(isinstance(plot, Plot) and plot.name == name and plot.caption
               for name, plot in PLOTS.items())


def test_one_registration_adds_a_figure(monkeypatch):
    monkeypatch.setattr("gif.plots.PLOTS", dict(PLOTS))
    from gif import plots

    @register_plot("probe", "A probe.", lambda result: "probe" in result)
    def draw(result):
        return b"png"

    assert plots.PLOTS["probe"]({"probe": 1}) == b"png"
    with pytest.raises(MissingPlotData, match="probe"):
        plots.PLOTS["probe"]({})
    assert "probe" not in PLOTS  # the module's registry was swapped for this test only


def test_per_class_has_one_panel_per_set():
    # Two sets -> two stacked panels -> taller than the one-set figure.
    one_set = {**RESULT, "metrics": {"before": {"test": RESULT["metrics"]["before"]["test"]},
                                     "after": {"test": RESULT["metrics"]["after"]["test"]}}}
    tall = _decoded(PLOTS["per_class"](RESULT))
    short = _decoded(PLOTS["per_class"](one_set))
    assert tall.shape[0] > 1.5 * short.shape[0]


def test_classes_are_labelled_by_name_where_the_result_knows_them():
    assert class_labels(RESULT, 3) == ["0", "1", "2"]  # an upload: indices
    fashion = {**RESULT, "class_names": builtin_class_names("builtin:fashion-mnist:test")}
    assert class_labels(fashion, 10)[8] == "Bag" and class_labels(fashion, 10)[0] == (
        "T-shirt/top")
    assert class_labels({"class_names": ["a"]}, 3) == ["0", "1", "2"]  # too few: indices
    named = _decoded(PLOTS["per_class"]({**fashion, "class_names": fashion["class_names"][:3]}))
    _assert_not_blank(named)


def test_built_in_class_names_are_defined_once_for_each_built_in():
    assert BUILTIN_CLASS_NAMES["fashion-mnist"][9] == "Ankle boot"
    assert builtin_class_names("builtin:digits:train") == [str(d) for d in range(10)]
    assert all(len(names) == 10 for names in BUILTIN_CLASS_NAMES.values())
    assert builtin_class_names("ds_123") is None
    assert builtin_class_names("builtin:nope:train") is None


def test_drawing_logs_nothing_from_matplotlib(caplog):
    """Layer names like "0" once made matplotlib's category converter log an INFO line per
    figure into the server log; positions are numbers now."""
    with caplog.at_level(logging.DEBUG, logger="matplotlib"):
        for name in sorted(GIF_FIGURES):
            PLOTS[name](RESULT)
        PLOTS["training"](TRAINING_RESULT)
    noisy = [r for r in caplog.records if r.name.startswith("matplotlib")
             and r.levelno >= logging.INFO]
    assert noisy == [], [r.getMessage()[:120] for r in noisy]


def test_user_names_with_dollars_are_text_not_mathtext():
    # Both are invalid mathtext: parsed as maths, drawing them raises ValueError.
    set_name, layer_name = "$x_{$", "a$\\frac{$b"
    odd = {**RESULT, "metrics": {"before": {set_name: {"per_class_accuracy": [0.5]}},
                                 "after": {set_name: {"per_class_accuracy": [0.4]}}},
           "selection": {"per_layer": [{"name": layer_name, "num_parameters": 4,
                                        "num_selected": 1, "ratio": 0.25, "update_norm": 1.0}]}}
    _decoded(PLOTS["per_class"](odd))
    _decoded(PLOTS["per_layer"](odd))


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_missing_data_is_a_clear_error(name):
    assert not PLOTS[name].has_data({"scale": None})
    with pytest.raises(MissingPlotData, match="result has no data"):
        PLOTS[name]({"scale": None})


def test_pruned_points_are_drawn_at_their_bound_and_kept_off_the_curve(monkeypatch):
    """A pruned α (gif.step: scoring stopped once its objective was proven below the best) is
    an upper bound, not a value: it is drawn as a marker at its bound, never joined to the
    objective's line, in the step-size and path figures — even when it is the curve's first."""
    import gif.plots

    figures = []
    real_png = gif.plots._png
    monkeypatch.setattr(gif.plots, "_png",
                        lambda figure: figures.append(figure) or real_png(figure))
    pruned = {"scale": 0.25, "objective": None, "objective_bound": 0.2, "pruned": True,
              "forget_accuracy": 0.95}
    result = {**RESULT, "step": {**RESULT["step"], "curve": [pruned, *RESULT["step"]["curve"]]},
              "path": {"iterates": [{"iteration": 1, "scale": 2.0, "objective": 0.9}],
                       "surface": [{"iteration": 1, "scale": 2.0, "objective": 0.9},
                                   {"iteration": 1, "scale": 0.25, "objective": None,
                                    "objective_bound": 0.2, "pruned": True}],
                       "chosen": {"iteration": 1, "scale": 2.0, "objective": 0.9}}}
    for name in ("scale", "path"):
        _assert_not_blank(_decoded(PLOTS[name](result)))
        axes = figures[-1].axes[0]
        lines = {line.get_label(): list(line.get_xdata()) for line in axes.get_lines()}
        markers = {collection.get_label(): collection.get_offsets().tolist()
                   for collection in axes.collections}
        bound_label = next(label for label in markers if label.startswith("pruned"))
        if name == "scale":
            assert markers[bound_label] == [[0.25, 0.2]]
            assert lines["objective"] == [0.5, 1.0, 2.0]  # the scored points only
        else:
            assert markers[bound_label] == [[1.0, 0.2]]
            assert markers["every (k, α) scored in full"] == [[1.0, 0.9]]
