"""Each plot returns a valid PNG that reads back with the expected size."""

from __future__ import annotations

import io

import matplotlib.image
import pytest

from gif.plots import PLOTS, MissingPlotData

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
        "per_layer": [
            {"name": "conv1", "num_parameters": 320, "num_selected": 32, "ratio": 0.1,
             "update_norm": 0.3},
            {"name": "fc", "num_parameters": 880, "num_selected": 88, "ratio": 0.1,
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
                  "forget": {"per_class_accuracy": [None, 0.02, None]}, "score": 0.9},
    },
}


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_plot_is_a_readable_png(name):
    png = PLOTS[name](RESULT)
    assert png.startswith(PNG_SIGNATURE)
    image = matplotlib.image.imread(io.BytesIO(png), format="png")
    height, width = image.shape[:2]
    assert 200 <= width <= 3000 and 150 <= height <= 3000


def test_per_class_has_one_panel_per_set():
    # Two sets -> two stacked panels -> taller than the one-set figure.
    one_set = {**RESULT, "metrics": {"before": {"test": RESULT["metrics"]["before"]["test"]},
                                     "after": {"test": RESULT["metrics"]["after"]["test"]}}}
    tall = matplotlib.image.imread(io.BytesIO(PLOTS["per_class"](RESULT)), format="png")
    short = matplotlib.image.imread(io.BytesIO(PLOTS["per_class"](one_set)), format="png")
    assert tall.shape[0] > 1.5 * short.shape[0]


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_missing_data_is_a_clear_error(name):
    with pytest.raises(MissingPlotData, match="result has"):
        PLOTS[name]({"scale": None})
