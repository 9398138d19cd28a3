"""Pruning the step search (method.md E9, ``gif.step``'s floor): an α whose objective is proven
below the best so far (minus ``PLATEAU_TOLERANCE`` for a new top α) stops being scored, and the
search's every decision — the α visited, the best α, the iterate chosen, the edit — is the one
of scoring every α in full. The bounded objective of ``gif.edit.measure`` is checked against
the full accuracies of a real model, and a whole edit is run both ways."""

from __future__ import annotations

import math

import pytest
import torch

import gif.step
from gif import metrics as M
from gif.data import load_dataset
from gif.edit import EditHooks, LoadedModel, run_edit
from gif.edit.measure import accuracy_objective
from gif.step import ScalePoint, _evaluate, search_scale
from tests.gif.test_edit_e2e import REMOVED, SPEC, request, train_mlp

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("builtin:digits:train"), load_dataset("builtin:digits:test")


@pytest.fixture(scope="module")
def clean_model(digits) -> dict:
    return train_mlp(digits[0], digits[0].y)


def bounding(true_objective, slack: float):
    """An objective that knows its value up to ``slack`` before scoring in full: it prunes
    (reporting ``value + slack``, a true upper bound) whenever that is below the floor."""
    calls = {"full": 0, "pruned": 0}

    def objective(alpha: float, floor: float) -> dict:
        value = true_objective(alpha)
        if value + slack < floor:
            calls["pruned"] += 1
            return {"objective": value + slack, "pruned": True}
        calls["full"] += 1
        return {"objective": value, "seen": alpha}

    return objective, calls


SHAPES = {
    "peak on the grid": lambda a: -((math.log2(a) - 1.5) ** 2),
    "peak past the top": lambda a: -abs(math.log2(a / 2.0**11)),
    "peak below the bottom": lambda a: -abs(math.log2(a / 2.0**-9)),
    # a plateau of one flipped validation point before the useful range (the full-data class
    # removal's unscaled update): the search must follow it upward exactly as before
    "plateau, then a peak": lambda a: (0.004 if a < 2.0**9 else
                                       0.5 - 0.01 * (math.log2(a) - 13) ** 2),
    "flat": lambda a: 0.25,
    # the grid's top within the tolerance of the best (followed upward), the next octave below
    # it by more: the search stops there; a bound within the tolerance of the best must not
    # prune that top edge, or the search would go on to the far peak it never saw in full
    "a plateau's end, then a far peak": lambda a: {32.0: 0.5, 64.0: 0.499, 128.0: 0.40,
                                                   256.0: 0.9}.get(a, 0.3 - 1e-3 * abs(
                                                       math.log2(a))),
    "ties below the top": lambda a: 0.5 if a in (0.25, 8.0) else 0.2,
    "two peaks": lambda a: max(-abs(math.log2(a / 0.25)), -abs(math.log2(a / 16.0)) - 0.002),
}

PRUNABLE = ("peak on the grid", "peak past the top", "two peaks")  # worse points after a good one


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("slack", [0.0, 0.098, 0.3, 3.0])
def test_pruning_changes_no_decision_of_the_search(shape, slack):
    true = SHAPES[shape]
    full = search_scale(lambda a: a, lambda a, floor: {"objective": true(a), "seen": a})
    objective, calls = bounding(true, slack)
    pruned = search_scale(lambda a: a, objective)
    assert [p.scale for p in pruned.points] == [p.scale for p in full.points]
    assert pruned.scale == full.scale and pruned.best == full.best
    for point, reference in zip(pruned.points, full.points, strict=True):
        if point.pruned:  # a bound of the true value, below the final best
            assert reference.objective <= point.objective < pruned.best.objective
        else:
            assert point == reference
    if shape in PRUNABLE and slack < 3.0:  # the bound is informative: it saves scoring
        assert calls["pruned"] > 0
    assert calls["full"] + calls["pruned"] == len(full.points)


def test_pruning_off_scores_every_alpha_in_full(monkeypatch):
    monkeypatch.setattr(gif.step, "PRUNING", False)
    objective, calls = bounding(SHAPES["peak on the grid"], 0.0)
    curve = search_scale(lambda a: a, objective)
    assert calls["pruned"] == 0 and not any(point.pruned for point in curve.points)


def test_a_pruned_point_reports_its_bound_not_an_objective():
    point = ScalePoint(scale=2.0, objective=0.3, components={"forget_accuracy": 0.9},
                       pruned=True)
    assert point.to_json() == {"scale": 2.0, "objective": None, "objective_bound": 0.3,
                               "pruned": True, "forget_accuracy": 0.9}


def test_an_objective_that_prunes_above_the_floor_is_refused():
    with pytest.raises(ValueError, match="below the floor"):
        _evaluate(lambda a: a, lambda a, floor: {"objective": 0.5, "pruned": True}, 1.0, 0.4)


class Counting(torch.nn.Module):
    """The digits MLP, counting the rows it scores."""

    def __init__(self, state: dict):
        super().__init__()
        from gif.registry import build_model

        self.inner = build_model(SPEC)
        self.inner.load_state_dict(state)
        self.rows = 0

    def forward(self, x):
        self.rows += len(x)
        return self.inner(x)


@pytest.mark.parametrize("kind", ["remove_class", "relabel"])
def test_the_bounded_accuracy_objective_is_exact_or_a_true_bound_below_the_floor(
        digits, clean_model, kind):
    from gif.data import prepare_inputs

    train, _ = digits
    x = prepare_inputs(train.x, SPEC.input, flat=True)
    edited = train.y == REMOVED
    edited_y = train.y[edited] if kind == "remove_class" else (train.y[edited] + 1) % 10
    name = "forget_accuracy" if kind == "remove_class" else "corrected_accuracy"
    sets = [(name, x[edited], edited_y), ("validation_accuracy", x[~edited], train.y[~edited])]
    model = Counting(clean_model)
    total = len(train.y)
    edited_accuracy = M.evaluate(model, *sets[0][1:], batch_size=512, num_classes=10)["accuracy"]
    validation = M.evaluate(model, *sets[1][1:], batch_size=512, num_classes=10)["accuracy"]
    value = M.score(kind, edited_accuracy, validation)
    objective = accuracy_objective(kind, sets, chunk=32)

    model.rows = 0
    full = objective(model, -math.inf)
    assert full == {"objective": pytest.approx(value), name: pytest.approx(edited_accuracy),
                    "validation_accuracy": pytest.approx(validation)}
    assert model.rows == total
    assert objective(model, value)["objective"] == pytest.approx(value)  # not below: in full
    # The model still knows the class (removal) / predicts the old labels (relabel): its score
    # is near 0, so a floor of 0.5 is proven out of reach after the first chunks.
    assert value < 0.2
    model.rows = 0
    early = objective(model, 0.5)
    assert early["pruned"] is True and value <= early["objective"] < 0.5
    assert model.rows < total / 2
    assert "validation_accuracy" not in early  # not measured in full: not reported


def test_an_edit_with_pruning_is_the_edit_without_it(digits, clean_model, monkeypatch):
    train, test = digits
    body = {"edit": {"kind": "remove_class", "class": REMOVED}}

    def edit():
        return run_edit(request(**body), LoadedModel(SPEC, clean_model), train, {"test": test},
                        EditHooks())

    pruned = edit()
    monkeypatch.setattr(gif.step, "PRUNING", False)
    full = edit()
    assert all(torch.equal(pruned.state_dict[k], full.state_dict[k]) for k in clean_model)
    assert pruned.result["scale"] == full.result["scale"]
    assert pruned.result["path"]["chosen"] == full.result["path"]["chosen"]
    assert pruned.result["path"]["iterates"] == full.result["path"]["iterates"]
    surface = pruned.result["path"]["surface"]
    reference = {(row["iteration"], row["scale"]): row["objective"]
                 for row in full.result["path"]["surface"]}
    assert [(row["iteration"], row["scale"]) for row in surface] == list(reference)
    assert any(row.get("pruned") for row in surface)  # it did prune
    for row in surface:
        if row.get("pruned"):
            assert row["objective"] is None
            assert reference[(row["iteration"], row["scale"])] <= row["objective_bound"]
        else:
            assert row["objective"] == reference[(row["iteration"], row["scale"])]
