"""E9 step search: it must pick the argmax of a known curve and record the whole curve."""

from __future__ import annotations

import math

import pytest

from gif.step import (
    DEFAULT_SCALES,
    MAX_EXTRA_OCTAVES,
    PATH_MIN_GAIN,
    PATH_PATIENCE,
    REFINE_OCTAVES,
    RegularisationPath,
    fixed_scale,
    path_scores,
    search_scale,
    validate_scales,
)


def _peaked_objective(peak: float):
    """A known curve in log α with its maximum at ``peak``: -(log2 α - log2 peak)²."""

    def objective(alpha: float, floor: float) -> dict[str, float]:
        return {"objective": -((math.log2(alpha) - math.log2(peak)) ** 2), "alpha_seen": alpha}

    return objective


@pytest.mark.parametrize("peak", [1 / 16, 1.0, 8.0])
def test_search_picks_argmax_of_known_curve(peak):
    applied = []

    def apply(alpha):
        applied.append(alpha)
        return alpha

    curve = search_scale(apply, _peaked_objective(peak))
    assert curve.scale == pytest.approx(peak)
    assert curve.mode == "auto"
    # Every grid point evaluated, from the top down, then the bisection refinement around the
    # best.
    assert applied[: len(DEFAULT_SCALES)] == sorted(DEFAULT_SCALES, reverse=True)
    assert len(applied) == len(DEFAULT_SCALES) + 2 * len(REFINE_OCTAVES)
    scales = [p["scale"] for p in curve.to_json()["curve"]]
    assert scales == sorted(applied)  # the whole curve is reported, sorted by α
    # The components come back with each point, computed at that point's α.
    assert all(p["alpha_seen"] == p["scale"] for p in curve.to_json()["curve"])


def test_refinement_finds_an_off_grid_peak():
    peak = 2.0**3.375  # between grid points 8 and 16; reachable by ±1/2, ±1/4, ±1/8 octave
    coarse = search_scale(lambda a: a, _peaked_objective(peak), refine_octaves=(),
                          max_extra_octaves=0)
    fine = search_scale(lambda a: a, _peaked_objective(peak))
    assert coarse.scale == 8.0
    assert fine.scale == pytest.approx(peak, rel=1e-9)
    assert fine.best.objective > coarse.best.objective


def test_search_follows_a_peak_beyond_the_grid_edges():
    high = search_scale(lambda a: a, _peaked_objective(2.0**9))
    assert high.scale == 2.0**9
    low = search_scale(lambda a: a, _peaked_objective(2.0**-8))
    assert low.scale == 2.0**-8
    bounded = search_scale(lambda a: a, _peaked_objective(2.0**20), max_extra_octaves=2)
    assert bounded.scale == 2.0**8  # 64 · 2 · 2: at most two extra octaves


def test_flat_bottom_edge_is_not_extended_but_a_flat_curve_is_followed_upward():
    curve = search_scale(lambda a: a, lambda a, floor: {"objective": 0.0})
    assert min(p.scale for p in curve.points) == min(DEFAULT_SCALES)
    assert max(p.scale for p in curve.points) == max(DEFAULT_SCALES) * 2.0**MAX_EXTRA_OCTAVES
    assert curve.scale == min(DEFAULT_SCALES)  # nothing helped: ties go to the smallest α


def test_a_peak_beyond_a_flat_stretch_is_found():
    """Too short an update changes no prediction on the whole grid (a flat objective); the
    useful α lies octaves above it (measured: 1,024-32,768 on a well-fitted TinyNet)."""
    def objective(alpha: float, floor: float) -> dict[str, float]:
        return {"objective": 0.0 if alpha < 2.0**10 else -((math.log2(alpha) - 12) ** 2) + 9}

    curve = search_scale(lambda a: a, objective)
    assert curve.scale == 2.0**12


def test_a_plateau_of_ties_is_followed_upward_to_the_peak_behind_it():
    """A stretch where one validation point flips (a small, constant objective) is still a
    plateau: the search goes on through it (measured on a full-data TinyNet: 0.004 from α = 64
    to 256, the peak at 16,384); it stops where the top is worse than the best."""
    def objective(alpha: float, floor: float) -> dict[str, float]:
        if alpha < 2.0**6:
            return {"objective": 0.0}
        if alpha < 2.0**10:  # varying in the fifth digit, as with the validation accuracy
            return {"objective": 0.004 - 1e-6 * math.log2(alpha)}
        return {"objective": 0.5 - 0.01 * (math.log2(alpha) - 14) ** 2}

    curve = search_scale(lambda a: a, objective)
    assert curve.scale == 2.0**14
    assert max(p.scale for p in curve.points) == 2.0**15  # one octave past the peak


def test_default_grid_is_positive_geometric_and_contains_newton_step():
    assert 1.0 in DEFAULT_SCALES
    assert all(s > 0 for s in DEFAULT_SCALES)
    ratios = {b / a for a, b in zip(DEFAULT_SCALES, DEFAULT_SCALES[1:], strict=False)}
    assert ratios == {2.0}


def test_ties_go_to_smallest_scale():
    curve = search_scale(lambda a: a, lambda a, floor: {"objective": 1.0 if a >= 0.5 else 0.0},
                         scales=[4.0, 0.25, 0.5, 2.0])
    assert curve.scale == 0.5


def test_nan_objective_never_wins():
    curve = search_scale(lambda a: a,
                         lambda a, floor: {"objective": float("nan") if a > 1 else a},
                         scales=[0.5, 1.0, 2.0, 4.0])
    assert curve.scale == 1.0
    assert curve.points[-1].objective == -math.inf


@pytest.mark.parametrize("bad", [[0.0], [-1.0], [float("inf")], []])
def test_nonpositive_scales_rejected(bad):
    with pytest.raises(ValueError):
        validate_scales(bad)


def test_fixed_mode_uses_given_scale_and_records_it():
    curve = fixed_scale(lambda a: a, _peaked_objective(8.0), 0.5)
    assert curve.mode == "fixed"
    assert curve.scale == 0.5
    assert curve.to_json()["curve"][0]["objective"] == pytest.approx(-16.0)


def test_should_stop_can_cancel_between_points():
    seen = []

    def stop():
        if len(seen) == 2:
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        search_scale(lambda a: seen.append(a) or a, lambda a, floor: {"objective": a},
                     should_stop=stop)
    assert len(seen) == 2


# --- the regularisation path (E9): candidates (k, α) over the solver's iterates ---------------


def _path_objective(best_k: int, best_alpha: float):
    """The candidate of iterate k is the number k; the objective peaks at (best_k, best_alpha)
    (a bowl in (k, log2 α)), so the path must return exactly that pair."""

    def objective(point: tuple[int, float], floor: float) -> dict[str, float]:
        k, alpha = point
        return {"objective": -((k - best_k) ** 2) - (math.log2(alpha) - math.log2(best_alpha)) ** 2}

    return objective


def test_path_returns_the_candidate_the_objective_prefers_and_waits_as_long_again_plus_patience():
    path = RegularisationPath(lambda k, alpha: (k, alpha), _path_objective(10, 0.25), patience=3)
    stopped_at = None
    for k in range(1, 50):
        if path.wants(k) and path.observe(k, k):
            stopped_at = k
            break
    # the best is k = 10: the solve goes on to the first scored k >= 2·10 + 3 (20 is too early)
    assert stopped_at == 24
    chosen, candidate, curve = path.finish()
    assert (chosen, candidate, curve.scale) == (10, 10, 0.25)
    report = path.to_json(chosen, curve)
    assert report["chosen"]["iteration"] == 10 and report["chosen"]["scale"] == 0.25
    assert [row["iteration"] for row in report["iterates"]] == [1, 2, 3, 4, 5, 6, 7, 8, 10, 12,
                                                                14, 16, 20, 24]
    best = max(report["surface"], key=lambda row: row["objective"])
    assert (best["iteration"], best["scale"]) == (10, 0.25)
    # Later iterates search around the previous best α only: 3 points, not the 13 of the grid.
    per_iterate = [sum(row["iteration"] == k for row in report["surface"]) for k in (1, 2)]
    assert per_iterate[0] >= len(DEFAULT_SCALES) and per_iterate[1] < len(DEFAULT_SCALES)


def test_path_prefers_the_earlier_iterate_on_ties():
    path = RegularisationPath(lambda k, alpha: alpha, lambda alpha, floor: {"objective": 1.0},
                              patience=2)  # every scored iterate ties with the first
    assert [path.observe(k, k) for k in (1, 2, 3, 4)] == [False, False, False, True]
    chosen, _, curve = path.finish()
    assert chosen == 1 and curve.scale == min(DEFAULT_SCALES)


def test_path_cancel_is_called_before_each_point():
    calls = []

    def stop():
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("cancelled")

    path = RegularisationPath(lambda k, alpha: alpha, lambda alpha, floor: {"objective": alpha},
                              should_stop=stop)
    with pytest.raises(RuntimeError, match="cancelled"):
        path.observe(1, 1)
    assert len(calls) == 4


def test_path_waits_longer_for_a_late_climb_after_an_early_dip():
    """The full-data TinyNet class removal's shape (benchmarks.md): a best at k = 2, a dip to
    k = 5, then a climb that peaks at k = 24. Three scored iterates of patience stopped at k = 5;
    the default waits to 2·2 + PATH_PATIENCE = 8, sees the climb, and follows it to its peak."""
    scores = {1: 0.0, 2: 0.45, 3: 0.40, 4: 0.38, 5: 0.42, 6: 0.44, 7: 0.44, 8: 0.52, 10: 0.6,
              12: 0.78, 14: 0.8, 16: 0.85, 20: 0.86, 24: 0.89}
    path = RegularisationPath(lambda k, alpha: k,
                              lambda k, floor: {"objective": scores.get(k, 0.88)})
    assert PATH_PATIENCE == 4 and PATH_MIN_GAIN == 0.005
    stopped_at = next(k for k in range(1, 200) if path.wants(k) and path.observe(k, k))
    assert stopped_at == 56  # the first scored k >= 2·24 + 4
    assert path.finish()[0] == 24


def test_gains_below_min_gain_are_chosen_but_do_not_extend_the_wait():
    """Ever smaller gains after a clear best at k = 3, all of them together under 0.004: the
    path still returns the highest score, but counts its wait from k = 3 (no later iterate beats
    it by more than ``min_gain``), so it stops at the first scored k >= 2·3 + 4 = 10 instead of
    doubling k at every small gain; with min_gain 0 each gain extends it past max_iter."""
    def scores(k, floor):
        return {"objective": 0.5 if k < 3 else 0.8 + 0.004 * (1 - 2 ** (-k / 4))}

    def stop_at(min_gain):
        path = RegularisationPath(lambda k, alpha: k, scores, min_gain=min_gain)
        stopped = next((k for k in range(1, 51) if path.wants(k) and path.observe(k, k)), None)
        return stopped, path.finish()[0], path.to_json(*path.finish()[::2])

    stopped, chosen, report = stop_at(0.005)
    assert (stopped, chosen) == (10, 10)  # the best so far is chosen: 10 scores 0.810
    assert report["reference_iteration"] == 3 and report["min_gain"] == 0.005
    stopped, chosen, _ = stop_at(0.0)
    assert stopped is None  # 2·k + 4 moved ahead at every scored iterate up to 50
    with pytest.raises(ValueError, match="min_gain"):
        RegularisationPath(lambda k, alpha: k, scores, min_gain=-1.0)


def test_path_scores_every_early_iterate_then_four_per_octave():
    assert [k for k in range(0, 70) if path_scores(k)] == [
        1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64]


def test_an_iterate_whose_best_alpha_is_the_smallest_is_followed_by_the_whole_grid():
    """The α window follows the previous best; when that best was the smallest α tried (no α
    helped), a window would only slide down with the ties, so the next iterate is scored on the
    whole grid: here iterate 1 helps nowhere and iterate 2 only at α = 16."""
    scored: dict[int, list[float]] = {}

    def objective(point, floor):
        k, alpha = point
        scored.setdefault(k, []).append(alpha)
        return {"objective": 1.0 if (k == 2 and alpha == 16.0) else 0.0}

    path = RegularisationPath(lambda candidate, alpha: (candidate, alpha), objective)
    path.observe(1, 1)
    path.observe(2, 2)
    iteration, _, curve = path.finish()
    assert (iteration, curve.scale) == (2, 16.0)
    assert set(DEFAULT_SCALES) <= set(scored[2])
