"""``solver.preconditioner: auto`` (method.md E8, "The scaling chosen per edit"): an unscaled
path still improving (its best α far past the grid from ``AUTO_SCALING_FAR_FROM`` on, its
score rising from ``AUTO_SCALING_EARLIEST`` on, or not stopped at ``AUTO_SCALING_ITERATION``)
hands over to the column-scaled solve, and the attempt the validation objective prefers is the
edit returned; a path that stops by itself is kept alone; MINRES and ``step.mode: fixed`` never
solve twice.

The objectives are rigged per attempt (the edits are real solves on the digits MLP): the first
path keeps its real objective with E9's stopping rule switched off, or scores a function of
the iteration chosen by the test, and the second path scores a constant chosen by the test —
so when the hand-over comes and which attempt the choice must keep are known in advance,
whatever the two geometries really do on this model."""

from __future__ import annotations

import math

import pytest
import torch

import gif.edit.run as edit_run
from gif.data import load_dataset
from gif.edit import EditHooks, LoadedModel, run_edit
from gif.edit.update import slow_path
from gif.plots import PLOTS, SCALING_NAMES, path_attempts
from gif.request import (
    AUTO_SCALING_EARLIEST,
    AUTO_SCALING_FAR_FROM,
    AUTO_SCALING_FAR_SCALE,
    AUTO_SCALING_ITERATION,
    EditRequest,
    check_solver,
)
from gif.step import RegularisationPath
from tests.gif.test_edit_e2e import REMOVED, SPEC, train_mlp

# The solver never stops on its own before the hand-over: no tolerance, stagnation or
# condition limit is reachable in these few iterations.
NEVER_CONVERGES = {"tol": 1e-12, "stagnation_window": 0, "conlim": 0, "max_iter": 30,
                   "hessian_samples": 256, "batch_size": 2048}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def train():
    return load_dataset("builtin:digits:train")


@pytest.fixture(scope="module")
def model(train) -> dict:
    return train_mlp(train, train.y, epochs=100)


def rig_paths(monkeypatch, second_score: float | None, first="endless") -> list:
    """Replace the paths ``run_edit`` makes. The first keeps its real objective, but its
    stopping rule never fires (``first="endless"``), or it scores a flat 0.5 and stops by
    itself (``"flat"``), or (a function of the iteration) it scores ``first(k)`` at every α of
    iterate ``k`` and E9's own rule stops it; the second scores ``second_score`` everywhere.
    Returns the paths."""
    made: list[RegularisationPath] = []

    class RiggedPath(RegularisationPath):
        def __init__(self, apply_fn, objective_fn, **kwargs):
            self.number = len(made)
            self.scoring = 0  # the iterate being scored

            def rigged(model, floor):  # scored in full: the rigged value replaces it
                real = objective_fn(model)  # keeps the components (validation accuracy, …)
                if self.number == 0:
                    if callable(first):
                        return {**real, "objective": first(self.scoring)}
                    return real if first == "endless" else {**real, "objective": 0.5}
                return {**real, "objective": second_score}

            super().__init__(apply_fn, rigged, **kwargs)
            made.append(self)

        def observe(self, iteration, candidate):
            self.scoring = iteration
            return super().observe(iteration, candidate)

        def should_end(self, iteration: int) -> bool:
            if self.number == 0 and first == "endless":
                return False
            return super().should_end(iteration)

    monkeypatch.setattr(edit_run, "RegularisationPath", RiggedPath)
    return made


def edit(train, model, progress=None, **solver):
    request = EditRequest.model_validate({"edit": {"kind": "remove_class", "class": REMOVED},
                                          "solver": {**NEVER_CONVERGES, **solver}})
    hooks = EditHooks(progress=progress.append) if progress is not None else None
    return run_edit(request, LoadedModel(SPEC, model), train, {}, hooks)


@pytest.mark.parametrize("second_score, kept", [(1.5, "columns"), (-1.0, "none")])
def test_a_slow_unscaled_path_hands_over_and_the_better_attempt_is_kept(
        train, model, monkeypatch, second_score, kept):
    made = rig_paths(monkeypatch, second_score)
    progress: list = []
    result = edit(train, model, progress).result
    scaling = result["solver"]["scaling"]
    first, second, *resumed = scaling["attempts"]
    assert len(made) == 2
    assert first["preconditioner"] == "none" and first["handed_over"] is True
    assert first["iterations"] == AUTO_SCALING_ITERATION and first["stop_reason"] == "callback"
    assert second["preconditioner"] == "columns" and second["handed_over"] is False
    assert scaling["chosen"] == kept
    better = max((first, second), key=lambda attempt: attempt["objective"])
    assert better["preconditioner"] == kept
    # a kept unscaled attempt is solved on from its hand-over (to max_iter: this path never
    # stops by itself), its first iterations not solved again: two HVPs per LSQR iteration
    # after the hand-over; every solve's HVPs count once
    assert len(resumed) == (1 if kept == "none" else 0)
    unscaled = resumed[0] if resumed else first
    if resumed:
        assert resumed[0]["preconditioner"] == "none"
        assert resumed[0]["resumed_from"] == first["iterations"]
        assert resumed[0]["iterations"] == NEVER_CONVERGES["max_iter"]
        assert resumed[0]["hvps"] == first["hvps"] + 2 * (resumed[0]["iterations"]
                                                          - first["iterations"])
    assert scaling["hvps_all_solves"] == unscaled["hvps"] + second["hvps"]
    # each attempt's scored iterates, for the path figure: the best of each is its objective
    for attempt in (first, second):
        assert [row["iteration"] for row in attempt["iterates"]] == sorted(
            row["iteration"] for row in attempt["iterates"])
        assert max(row["objective"] for row in attempt["iterates"]) == attempt["objective"]
    assert first["iterates"][-1]["iteration"] == AUTO_SCALING_ITERATION
    kept_label, others = path_attempts(result)
    assert kept_label == SCALING_NAMES[kept] and len(others) == 1
    other = second if kept == "none" else first
    label, ks, objectives = others[0]
    assert label.startswith(SCALING_NAMES[other["preconditioner"]] + " attempt, not kept")
    assert (ks, objectives) == ([r["iteration"] for r in other["iterates"]],
                                [r["objective"] for r in other["iterates"]])
    assert PLOTS["path"](result).startswith(b"\x89PNG")
    # the result's solve, path and step are the kept attempt's
    kept_attempt = resumed[0] if kept == "none" else second
    assert result["solver"]["iterations"] == kept_attempt["iterations"]
    assert result["solver"]["hvps"] == kept_attempt["hvps"]
    assert result["solver"].get("preconditioner") == ("columns" if kept == "columns" else None)
    assert result["path"]["chosen"]["objective"] >= kept_attempt["objective"]
    # the scaled solve's progress counts on from the hand-over, and the resumed solve's from
    # the scaled one's end: never back, and every iteration solved counted once
    solve = [p.iteration for p in progress if p.phase == "solve" and p.iteration is not None]
    assert solve == sorted(solve)
    assert solve[-1] == unscaled["iterations"] + second["iterations"]


def rises_until(last: int):
    """A score that rises by 0.1 at every iterate up to ``last`` and is flat after it."""
    return lambda k: 0.1 * min(k, last)


@pytest.mark.parametrize("score, handed_at", [
    (rises_until(100), 8),  # rising at 8: slow, handed over at once (AUTO_SCALING_EARLIEST)
    # flat from 7, rising again at 10: the first rise from 8 on (scored: 8, 10, 12, …)
    (lambda k: rises_until(7)(k) + (0.1 if k >= 10 else 0.0), 10),
    (rises_until(7), AUTO_SCALING_ITERATION),  # E9 would go on to 2·7 + 4 = 18: the backstop
    (rises_until(6), None),  # E9 stops it at 2·6 + 4 = 16 by itself: kept alone
])
def test_the_hand_over_comes_at_the_first_rise_from_iteration_8_or_at_16(
        train, model, monkeypatch, score, handed_at):
    made = rig_paths(monkeypatch, 1.5, first=score)
    attempts = edit(train, model).result["solver"]["scaling"]["attempts"]
    first = attempts[0]
    if handed_at is None:
        assert len(made) == 1 and len(attempts) == 1 and not first["handed_over"]
        assert first["iterations"] == 16 and first["stop_reason"] == "callback"
    else:
        assert len(made) == 2 and first["handed_over"]
        assert first["iterations"] == handed_at
    assert AUTO_SCALING_EARLIEST == 8 and AUTO_SCALING_ITERATION == 16  # the cases above


@pytest.mark.parametrize("method", ["gif", "fif", "pif", "if"])
@pytest.mark.parametrize("peak, slow", [
    (AUTO_SCALING_FAR_SCALE, True),  # the update must be stretched 512-fold: far too short
    (2.0**11, True),  # the full-data TinyNet's class removal at k = 1
    (AUTO_SCALING_FAR_SCALE / 2, False),
    (128.0, False),  # where the medium PIF class removal's third iterate peaks
])
def test_an_iterate_whose_best_step_is_far_past_the_grid_hands_over_from_its_methods_iterate(
        method, peak, slow):
    """Scored iterates whose objective peaks at α = ``peak`` (a bowl in log α): the α search
    follows it past the grid's top, and ``slow_path`` reads the best α it found — from
    ``AUTO_SCALING_FAR_FROM`` on: GIF and FIF from the first iterate, PIF and IF never at the
    first two (PIF's are short on their own)."""
    path = RegularisationPath(lambda candidate, alpha: alpha,
                              lambda alpha, floor: {"objective": -abs(math.log2(alpha / peak))})
    assert AUTO_SCALING_FAR_FROM == {"gif": 1, "fif": 1, "pif": 3, "if": 3}
    first = AUTO_SCALING_FAR_FROM[method]
    for k in range(1, first):
        assert not path.observe(k, "x")
        assert path.iterates[-1].curve.scale == peak and slow_path(path, k, method) is False
    assert not path.observe(first, "x")
    assert path.iterates[-1].curve.scale == peak
    assert slow_path(path, first, method) is slow


def test_keeping_the_unscaled_attempt_returns_what_the_unscaled_solve_alone_gives(
        train, model, monkeypatch):
    """When the scaling loses, the hand-over changes nothing: the unscaled attempt is solved on
    from where it stopped, and the edit is bit-identical to an unscaled request's."""
    rig_paths(monkeypatch, -1.0)
    chosen = edit(train, model)
    assert chosen.result["solver"]["scaling"]["chosen"] == "none"
    rig_paths(monkeypatch, None)  # one path only: the same endless first path
    alone = edit(train, model, preconditioner="none")
    assert "scaling" not in alone.result["solver"]
    assert alone.result["path"] == chosen.result["path"]
    assert all(torch.equal(chosen.state_dict[k], alone.state_dict[k]) for k in model)


def test_a_path_that_stops_by_itself_is_kept_alone(train, model, monkeypatch):
    made = rig_paths(monkeypatch, 1.5, first="flat")  # no gain: E9 ends it at k = 2·1 + 4
    result = edit(train, model).result
    scaling = result["solver"]["scaling"]
    assert len(made) == 1 and len(scaling["attempts"]) == 1
    assert scaling["chosen"] == "none" and scaling["attempts"][0]["handed_over"] is False
    assert path_attempts(result) == (None, [])  # one solve: nothing beside it to draw
    assert result["solver"]["iterations"] < AUTO_SCALING_ITERATION


def test_minres_and_a_fixed_step_never_solve_twice(train, model, monkeypatch):
    made = rig_paths(monkeypatch, 1.5)
    check_solver("fif", EditRequest.model_validate(
        {"edit": {"kind": "remove_class", "class": 0}, "solver": {"algorithm": "minres"}}
    ).solver)  # auto is accepted with MINRES: it means none there
    request = EditRequest.model_validate({
        "edit": {"kind": "remove_class", "class": REMOVED}, "method": "fif",
        "solver": {**NEVER_CONVERGES, "algorithm": "minres"}})
    result = run_edit(request, LoadedModel(SPEC, model), train, {}).result
    assert len(made) == 1 and len(result["solver"]["scaling"]["attempts"]) == 1
    assert result["solver"]["iterations"] > AUTO_SCALING_ITERATION  # no hand-over at 16
    made.clear()
    fixed = EditRequest.model_validate({
        "edit": {"kind": "remove_class", "class": REMOVED}, "step": {"mode": "fixed"},
        "solver": {**NEVER_CONVERGES, "max_iter": 20}})
    result = run_edit(fixed, LoadedModel(SPEC, model), train, {}).result
    assert made == [] and "scaling" not in result["solver"]
    assert result["solver"]["iterations"] == 20
