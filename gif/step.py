"""method.md E9: the step ``θ_S ← θ_S + α Δ_S``, the honest choice of ``α``, and the
regularisation path that chooses the solver's iterate ``k`` and ``α`` together
(``RegularisationPath``, at the end of this module).

Deep networks are far from quadratic, so the Newton step ``α = 1`` is rarely the best one.
``α`` is chosen on a validation split held out from the training data the edit was given
(never on the evaluation sets) by an explicit objective, and the whole curve is reported.

The default grid is geometric with ratio 2 from 1/64 to 64 (13 points, α = 1 among them):
it brackets the Newton step by six octaves on either side, which covers both an update that
overshoots (the linearisation is too optimistic) and one that undershoots (a whole-class
removal, whose loss is far from its quadratic model), while costing only 13 forward passes
over the validation split. A best point on the grid's top edge, or a plateau reaching it, is
followed past it, octave by octave (the Newton step of a truncated solve, or of a well-fitted
model, can be far too short; ``_extend_past_edges``). The grid is then
refined around its best point by
bisection in log α (``REFINE_OCTAVES``: ±1/2, ±1/4, ±1/8 octave, 6 more points): the
trade-off between forgetting and keeping is often sharp within one octave.

Each α is scored against a *floor*: the best objective found so far, minus
``PLATEAU_TOLERANCE`` for an α above every one tried (the top edge, which the upward plateau
rule compares with the best within that tolerance). An objective that can bound itself from a
part of the validation data (``gif.edit.measure``) stops as soon as its upper bound is below the
floor and reports the point *pruned*, with that bound. The floor is exactly where no decision
of the search can use the value: a point below it is neither the best nor tied with it, nor a
plateau the search follows upward (an α tried below the top never becomes the top: the range
only grows upward by new points), nor better than the bottom edge it may be compared with
(``_best``, ``_extend_past_edges``), so the curve's choice and every α visited are those of
scoring every point in full (method.md E9).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_SCALES: tuple[float, ...] = tuple(2.0**k for k in range(-6, 7))
REFINE_OCTAVES: tuple[float, ...] = (0.5, 0.25, 0.125)
PLATEAU_TOLERANCE = 0.005
"""Upward, the search goes on while the largest α tried scores no more than this below the
best: a plateau (objectives equal up to the validation accuracy's small changes) is not a
peak. The same half point of validation accuracy as ``PATH_MIN_GAIN``."""
PRUNING = True
"""Whether a search passes its floor to the objective (the module docstring). False scores
every α in full: the same choices at a higher cost (``experiments/candidates.py`` measures
both in one run; docs/defaults.md, "Pruning the step search")."""
MAX_EXTRA_OCTAVES = 12
"""How far past the grid's edges a best α (or a flat curve, upward) is followed: 2^18 at the
top. A well-fitted model's Newton step is short (its edited points' gradients are nearly
saturated), and its useful α can lie far above 64: measured on the full-data TinyNet class
removal, 1,024–32,768 for the first LSQR iterates (docs/defaults.md, "The step's range")."""


Objective = Callable[[Any, float], dict[str, Any]]
"""``objective(model, floor)`` → ``{"objective": float, **components}`` measured on the
validation split. It may stop early once it has proven its objective below ``floor`` and return
``{"objective": upper_bound, "pruned": True, **the components it measured in full}``
(``upper_bound < floor``); ``floor = -inf`` asks for the full measurement."""


@dataclass(frozen=True)
class ScalePoint:
    """One evaluated ``α``: its objective and the components it was computed from. A
    *pruned* point was stopped once its objective was proven below the search's floor:
    ``objective`` is then that upper bound, never the value itself."""

    scale: float
    objective: float
    components: dict[str, float] = field(default_factory=dict)
    pruned: bool = False

    def objective_json(self) -> dict[str, Any]:
        """``{objective}``, or for a pruned point ``{objective: None, objective_bound, pruned}``:
        the bound is not the objective, so it is reported as what it is."""
        if self.pruned:
            return {"objective": None, "objective_bound": self.objective, "pruned": True}
        return {"objective": self.objective}

    def to_json(self) -> dict[str, Any]:
        return {"scale": self.scale, **self.objective_json(), **self.components}


@dataclass(frozen=True)
class ScaleCurve:
    """The evaluated curve and the chosen ``α`` (E9). ``mode`` is ``auto`` or ``fixed``."""

    mode: str
    points: tuple[ScalePoint, ...]
    best_index: int

    @property
    def best(self) -> ScalePoint:
        return self.points[self.best_index]

    @property
    def scale(self) -> float:
        return self.best.scale

    def to_json(self) -> dict[str, Any]:
        """``{mode, curve: [{scale, objective, ...components}]}``, the result's ``step``."""
        return {"mode": self.mode, "curve": [point.to_json() for point in self.points]}


def validate_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """The grid, sorted ascending; every ``α`` must be finite and > 0 (E9)."""
    if len(scales) == 0:
        raise ValueError("the scale grid is empty")
    for scale in scales:
        if not (math.isfinite(scale) and scale > 0.0):
            raise ValueError(f"every scale must be finite and > 0, got {scale!r}")
    return tuple(sorted(set(float(s) for s in scales)))


def _evaluate(
    apply_fn: Callable[[float], Any],
    objective_fn: Objective,
    scale: float,
    floor: float = -math.inf,
) -> ScalePoint:
    """Apply ``α`` and score it against ``floor`` (``Objective``). A non-finite objective
    (NaN weights) counts as -inf."""
    values = dict(objective_fn(apply_fn(scale), floor))
    objective = float(values.pop("objective"))
    pruned = bool(values.pop("pruned", False))
    if not math.isfinite(objective):
        objective = -math.inf
    if pruned and not objective < floor:
        raise ValueError(f"a pruned objective's bound {objective!r} must be below the floor "
                         f"{floor!r}")
    return ScalePoint(scale=scale, objective=objective, components=values, pruned=pruned)


def search_scale(
    apply_fn: Callable[[float], Any],
    objective_fn: Objective,
    scales: Sequence[float] = DEFAULT_SCALES,
    *,
    refine_octaves: Sequence[float] = REFINE_OCTAVES,
    max_extra_octaves: int = MAX_EXTRA_OCTAVES,
    should_stop: Callable[[], None] | None = None,
    known: Sequence[ScalePoint] = (),
    first: float | None = None,
) -> ScaleCurve:
    """E9, ``mode=auto``: evaluate every ``α`` in ``scales``, refine around the best, keep it.

    Edges: when the best ``α`` is the grid's largest (or its smallest, strictly better than
    the next), the search doubles (halves) it, up to ``max_extra_octaves`` times, until the
    objective turns. Refinement: for each ``r`` in ``refine_octaves`` the current best ``α``
    is tried at ``α·2^(±r)`` (bisection in log α) inside the range evaluated so far; pass
    ``max_extra_octaves=0, refine_octaves=()`` to evaluate the grid only.

    ``apply_fn(α)`` returns whatever ``objective_fn`` scores (the model with
    ``θ_S + αΔ_S`` loaded); ``objective_fn`` is an ``Objective``, scored against the floor of
    the module docstring (points below it may come back pruned). Ties go to the *smallest*
    ``α``: among equally good edits, the one that moves the weights least. ``should_stop`` is
    called before each point (it raises to cancel). A curve whose every point is non-finite
    still returns (its smallest ``α``); the caller's check of the edited weights then reports
    it. ``known`` are points already scored for this update (reused, not scored again).

    The grid is visited from ``first`` (the likeliest best, e.g. the previous iterate's α), if
    it is on the grid, then from the top down: the order changes no result, only how much a
    floor set by a good point early can prune (a class removal's best α is at the grid's top
    or past it).
    """
    grid = validate_scales(scales)
    evaluated: dict[float, ScalePoint] = {point.scale: point for point in known}

    def floor(scale: float) -> float:
        scored = [point.objective for point in evaluated.values() if not point.pruned]
        if not (scored and PRUNING):
            return -math.inf
        new_top = all(scale > other for other in evaluated)
        return max(scored) - PLATEAU_TOLERANCE if new_top else max(scored)

    def visit(scale: float) -> None:
        if scale not in evaluated:
            if should_stop is not None:
                should_stop()
            evaluated[scale] = _evaluate(apply_fn, objective_fn, scale, floor(scale))

    for scale in sorted(grid, key=lambda scale: (scale != first, -scale)):
        visit(scale)
    _extend_past_edges(evaluated, visit, max_extra_octaves)
    for octave in refine_octaves:
        best = _best(list(evaluated.values())).scale
        low, high = min(evaluated), max(evaluated)
        for factor in (2.0**-octave, 2.0**octave):
            if low < best * factor < high:  # refine inside the range tried, never beyond it
                visit(best * factor)
    points = sorted(evaluated.values(), key=lambda point: point.scale)
    return ScaleCurve(mode="auto", points=tuple(points), best_index=points.index(_best(points)))


def _extend_past_edges(evaluated: dict[float, ScalePoint], visit, max_extra: int) -> None:
    """While the largest α tried scores within ``PLATEAU_TOLERANCE`` of the best (or better),
    try twice it; while the best is the smallest tried and strictly better than the next, try
    half it (at most ``max_extra`` octaves each way), so a maximum beyond the grid is followed
    instead of stopping at the grid's edge. Upward, a plateau continues: a flat stretch is
    what too short an update gives (no α there changes more than a prediction or two), not
    evidence that no larger α helps; measured on the full-data TinyNet class removal, a
    plateau of one flipped validation point (objective 0.0039, varying in its fifth digit with
    the validation accuracy) from α = 128 to 256 before the useful range, 2,048-16,384."""
    for direction in (2.0, 0.5):
        for _ in range(max_extra):
            scales = sorted(evaluated)
            if len(scales) < 2:
                break
            best = _best(list(evaluated.values()))
            if direction > 1:
                edge = scales[-1]
                if evaluated[edge].objective < best.objective - PLATEAU_TOLERANCE:
                    break
            else:
                edge = scales[0]
                if best.scale != edge or not best.objective > evaluated[scales[1]].objective:
                    break  # a flat bottom edge: ties already go to the smallest α
            visit(edge * direction)


def _best(points: list[ScalePoint]) -> ScalePoint:
    """Highest objective; ties to the smallest α."""
    return max(points, key=lambda point: (point.objective, -point.scale))


def fixed_scale(
    apply_fn: Callable[[float], Any],
    objective_fn: Objective,
    scale: float,
) -> ScaleCurve:
    """E9, ``mode=fixed``: use the caller's ``α``, still recording its objective."""
    (scale,) = validate_scales([scale])
    point = _evaluate(apply_fn, objective_fn, scale)
    return ScaleCurve(mode="fixed", points=(point,), best_index=0)


# --------------------------------------------------------------------------- the path (E9)

PATH_PATIENCE = 4
"""Solver iterations, beyond as many again as the reference iterate took, without a clearly
better validation score before the path stops the solve (E9): it stops at the first scored
``k ≥ 2·k_ref + PATH_PATIENCE``. The wait grows with ``k_ref`` because LSQR's early iterates
follow ``H·b`` rather than ``H⁻¹·b`` and the objective can dip and then climb for dozens of
iterations (measured on the full-data TinyNet class removal: 0.45 at k = 2, 0.38 at k = 4, 0.52
at k = 8, 0.89 at k = 24, 0.955 at k = 50); the previous rule (3 scored iterates) stopped that
solve at k = 5 and wrecked the model (docs/defaults.md, "The path's patience")."""
PATH_MIN_GAIN = 0.005
"""How much better than the reference iterate's score a later iterate must be to become the
new reference ``k_ref`` (and so extend the wait). Half a point of validation accuracy, about
half the sampling error of an accuracy on the 1,024-point validation split: smaller gains are
mostly noise, and following them doubled the solve (the small benchmark's sample removal with
a holdout ran all 50 iterations on gains of 0.001). The choice is still the best iterate."""
PATH_OCTAVES = 1
"""After the first scored iterate, each iterate's α grid is the previous best α · 2^(−1, 0, 1)
(followed past its edges as in ``search_scale``): the best α moves smoothly along the path (the
iterate's norm grows with k), so 3 forward passes per iterate suffice; the chosen iterate's α
is refined to 1/8 octave at the end. An iterate whose best α was the smallest it tried is
followed by the whole grid again (``RegularisationPath.observe``)."""


def path_scores(iteration: int) -> bool:
    """Whether the path scores iterate ``k``: every one up to 8, then four per octave
    (10, 12, 14, 16, 20, 24, 28, 32, 40, …). Scoring costs forward passes over the validation
    split, several times an iteration's two HVPs, and the objective changes slowly in ``k``
    once the solve has taken its first large steps, so the schedule is geometric."""
    if iteration < 1:
        return False
    step = 2 ** max(0, iteration.bit_length() - 3)
    return iteration % step == 0


@dataclass(frozen=True)
class PathIterate:
    """One iterate ``x_k`` of the solve scored over α: its curve (E9)."""

    iteration: int
    curve: ScaleCurve

    def to_json(self) -> dict[str, Any]:
        best = self.curve.best
        return {"iteration": self.iteration, **best.to_json()}


class RegularisationPath:
    """method.md E9: the candidates ``(k, α)`` over the iterates ``x_k`` of the solve, scored on the
    validation split, the solve stopped at the first scored iterate ``k ≥ 2·k_ref + patience``,
    where ``k_ref`` is the last iterate that beat the previous reference by more than ``min_gain``
    (iterates are scored on the ``path_scores`` schedule).

    ``apply_fn(candidate, α)`` loads ``θ̂ + α·pad(candidate)`` and returns what ``objective_fn``
    scores. Call ``observe(k, candidate)`` for each iterate ``wants(k)`` (the candidate must be
    the caller's own copy: the best one is kept); it returns True when the solve should stop.
    ``finish`` refines α around the best iterate's best α (``REFINE_OCTAVES``) and returns the
    chosen ``(k, candidate, curve)``. Ties go to the earlier iterate (less solving, a shorter
    update) and, within an iterate, to the smaller α.
    """

    def __init__(self, apply_fn: Callable[[Any, float], Any],
                 objective_fn: Objective, *,
                 patience: int = PATH_PATIENCE, min_gain: float = PATH_MIN_GAIN,
                 should_stop: Callable[[], None] | None = None):
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        if not min_gain >= 0:
            raise ValueError(f"min_gain must be >= 0, got {min_gain}")
        self.min_gain = min_gain
        self.apply_fn = apply_fn
        self.objective_fn = objective_fn
        self.patience = patience
        self.should_stop = should_stop
        self.iterates: list[PathIterate] = []
        self.best: PathIterate | None = None
        self.best_candidate: Any = None
        self.reference: PathIterate | None = None  # the wait is counted from it

    def _curve(self, candidate: Any, scales: Sequence[float], refine: Sequence[float],
               known: Sequence[ScalePoint] = (), first: float | None = None) -> ScaleCurve:
        return search_scale(lambda alpha: self.apply_fn(candidate, alpha), self.objective_fn,
                            scales, refine_octaves=refine, should_stop=self.should_stop,
                            known=known, first=first)

    def wants(self, iteration: int) -> bool:
        """Whether iterate ``iteration`` is on the scoring schedule (``path_scores``)."""
        return path_scores(iteration)

    def observe(self, iteration: int, candidate: Any) -> bool:
        """Score iterate ``iteration`` over α; True once ``should_end`` says the best is behind."""
        previous = self.iterates[-1].curve if self.iterates else None
        centre = None
        if previous is not None and previous.best_index > 0:
            centre = previous.scale
            scales = [centre * 2.0**o for o in range(-PATH_OCTAVES, PATH_OCTAVES + 1)]
        else:
            # the first iterate, or one whose best α was the smallest it tried (no α helped,
            # e.g. too short an update): the whole grid again, not a window that would only
            # slide down with the ties (measured: to α = 6e-8 at k = 50, no edit made)
            scales = DEFAULT_SCALES
        point = PathIterate(iteration, self._curve(candidate, scales, (), first=centre))
        self.iterates.append(point)
        score = point.curve.best.objective
        if self.best is None or score > self.best.curve.best.objective:
            self.best, self.best_candidate = point, candidate
        if self.reference is None or score > self.reference.curve.best.objective + self.min_gain:
            self.reference = point
        return self.should_end(iteration)

    def should_end(self, iteration: int) -> bool:
        """Whether the solve may stop at ``iteration``: as many iterations again as the
        reference iterate took, plus ``patience``, brought no gain over it above ``min_gain``
        (``PATH_PATIENCE``, ``PATH_MIN_GAIN``)."""
        return (self.reference is not None
                and iteration >= 2 * self.reference.iteration + self.patience)

    def finish(self) -> tuple[int, Any, ScaleCurve]:
        """The chosen iterate, its candidate and its α curve, refined around the best α."""
        if self.best is None:
            raise ValueError("no iterate was observed")
        curve = self._curve(self.best_candidate, [self.best.curve.scale], REFINE_OCTAVES,
                            known=self.best.curve.points)
        return self.best.iteration, self.best_candidate, curve

    def to_json(self, chosen_iteration: int, curve: ScaleCurve) -> dict[str, Any]:
        """``result.path``: the lever, the patience, the chosen ``(k, α)``, the best point of
        each iterate and the whole surface of evaluated ``(k, α)``."""
        return {
            "lever": "iterations",
            "patience": self.patience,
            "min_gain": self.min_gain,
            "reference_iteration": None if self.reference is None else self.reference.iteration,
            "chosen": {"iteration": chosen_iteration, **curve.best.to_json()},
            "iterates": [point.to_json() for point in self.iterates],
            "surface": [{"iteration": point.iteration, "scale": p.scale, **p.objective_json()}
                        for point in self.iterates for p in point.curve.points],
        }
