"""The warnings of an edit's result: what a reader must not miss although the job succeeded.

One owner for the rule, shared by the report's header (``service/report.py``), the client's
``Job.warnings`` and the command line. A result lists its warnings in ``result["warnings"]``
(``{code, message}``, written by the engine); for a result that has none recorded (older jobs),
they are derived from its diagnostics:

- ``solver_not_converged``: the solve (docs/method.md, E6–E8) stopped, e.g. at ``max_iter``, without
  meeting its tolerance (``solver.converged`` false; ``stop_reason`` says which rule ended it);
- ``step_not_improved``: the step search (E9) found no scale that beats the unedited model;
- ``retained_accuracy_drop``: the chosen edit keeps the validation split (retained points the
  edit never trained on) more than ``RETAINED_DROP_LIMIT`` below the unedited model's accuracy
  there — the objective trades forgetting against keeping, and may prefer a damaged model to
  an unchanged one (measured: PIF on the full-data TinyNet, 0.98 → 0.45).

Pure Python on plain JSON values: importing it pulls in neither torch nor a web framework.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def result_warnings(result: Mapping[str, Any] | None) -> list[dict[str, str]]:
    """The result's ``warnings`` (``{code, message}``); for a result that has none recorded,
    those its diagnostics imply: a solve that stopped unconverged, a step search that did not
    beat the unedited model."""
    if not isinstance(result, Mapping):
        return []
    if isinstance(result.get("warnings"), list):
        return [{"code": str(w.get("code", "warning")), "message": str(w.get("message", ""))}
                for w in result["warnings"] if isinstance(w, Mapping)]
    return [*solver_warnings(result.get("solver")), *step_warnings(result.get("step"))]


def solver_warnings(solver: Any) -> list[dict[str, str]]:
    """``solver_not_converged`` when the solve's diagnostics say it stopped unconverged."""
    if not isinstance(solver, Mapping) or solver.get("converged") is not False:
        return []
    return [{"code": "solver_not_converged", "message": (
        f"the {solver.get('algorithm') or 'solver'} stopped after "
        f"{_number(solver.get('iterations'))} iterations "
        f"({solver.get('stop_reason') or 'no reason recorded'}) without converging: "
        f"relative residual {_number(solver.get('residual'), 3)}. The update is the best "
        "the solver reached; more iterations (solver.max_iter) or damping may improve it.")}]


def step_warnings(step: Any) -> list[dict[str, str]]:
    """``step_not_improved`` when the step search found nothing better than no edit."""
    if not isinstance(step, Mapping) or step.get("improved") is not False:
        return []
    return [{"code": "step_not_improved", "message": (
        "no step scale improved the validation objective over the unedited model: the "
        "edit barely changes the model. Try a larger selection.ratio, more solver "
        "iterations or another method.")}]


RETAINED_DROP_LIMIT = 0.05
"""Five points of validation accuracy: far beyond retraining's own change on the benchmark's
tasks (under two points) and beyond the 1,024-point split's sampling error (about one)."""


def retained_drop_warnings(baseline: Any, chosen: Any) -> list[dict[str, str]]:
    """``retained_accuracy_drop`` when the chosen point's ``validation_accuracy`` is more than
    ``RETAINED_DROP_LIMIT`` below the unedited model's (both from the step objective, E9)."""
    before = baseline.get("validation_accuracy") if isinstance(baseline, Mapping) else None
    after = chosen.get("validation_accuracy") if isinstance(chosen, Mapping) else None
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in (before, after)):
        return []
    if before - after <= RETAINED_DROP_LIMIT:
        return []
    return [{"code": "retained_accuracy_drop", "message": (
        f"the chosen edit keeps {after:.1%} of the validation split (retained training points "
        f"held out of the edit) against {before:.1%} before it: the objective preferred this "
        "trade of forgetting against keeping to no edit. Check the metrics before using the "
        "model; another method, a larger selection.ratio or more solver iterations may do "
        "better.")}]


def _number(value: Any, digits: int = 4) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.{digits}g}"
    return "—" if value is None else str(value)
