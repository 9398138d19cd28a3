"""``run_edit``: the one edit function (see ``gif.edit``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from gif.edit.hooks import EditHooks, EditOutcome, LoadedModel, Reporter
from gif.edit.measure import Measurer, step_objective
from gif.edit.prepare import prepare_edit
from gif.edit.result import (
    check_finite_state,
    copy_model,
    full_update,
    json_clean,
    load_flat,
    per_layer_changes,
    solver_summary,
)
from gif.edit.update import edit_system, select_target, solve_on_paths, solve_update
from gif.request import EditRequest
from gif.result_warnings import retained_drop_warnings, step_warnings
from gif.step import RegularisationPath, ScaleCurve, ScalePoint


def run_edit(
    request: EditRequest,
    model: LoadedModel,
    train,
    eval_sets: Mapping[str, Any],
    hooks: EditHooks | None = None,
    holdout=None,
) -> EditOutcome:
    """Edit ``model`` as ``request`` says, using ``train`` (``gif.data.ArrayDataset``).

    ``eval_sets`` (name → ``ArrayDataset``) are only evaluated, never used for any choice; the
    first one carries the ``score``. ``holdout`` is the dataset ``step.holdout_dataset_id``
    names (non-members that tune a sample removal, method.md E9; never reported). Raises a
    ``GifError`` subclass on every failure.
    """
    if request.trains:  # the E10 training methods: their own loop, the same lifecycle
        from gif.unlearning import run_training_edit

        return run_training_edit(request, model, train, eval_sets, hooks)
    from gif.params import ParamSpace, apply_update

    reporter = Reporter(hooks or EditHooks())
    warnings: list[dict[str, str]] = []
    with reporter.phase("load"):
        prepared = prepare_edit(request, model, train, eval_sets, holdout)
        original, plan, data = prepared.original, prepared.plan, prepared.data
        num_classes = prepared.num_classes
        space = ParamSpace.from_model(original)
        reporter.event("info", "load", "model and data ready", {
            "device": str(prepared.device), "num_parameters": space.size,
            "num_classes": num_classes, "edited_points": len(plan.edited),
            "edit_sample": len(plan.edit_sample), "hessian_sample": len(plan.hessian),
            "validation_split": len(plan.validation),
            "holdout_sample": None if plan.holdout is None else len(plan.holdout),
        })

    with reporter.phase("select"):
        indices, selection_info = select_target(request, original, space, data, reporter)
        reporter.event("info", "select", f"{len(indices):,} of {space.size:,} parameters move",
                       {"num_selected": len(indices), "criterion": request.selection.criterion})

    edited = copy_model(original)
    theta_hat = space.flatten(dict(original.named_parameters())).detach()

    def apply(delta: torch.Tensor, alpha: float) -> nn.Module:
        load_flat(edited, space, theta_hat + alpha * full_update(indices, delta, space.size,
                                                                 theta_hat))
        return edited

    auto = request.step.mode == "auto"
    path = objective = None
    if auto:
        objective = step_objective(request.edit.kind, data, num_classes)
        warnings += objective_warnings(request, data)

    with reporter.phase("solve"):
        system = edit_system(request, original, data, plan, reporter)
        if not auto:
            solution = solve_update(request, system, indices, reporter)
            scaling = None
        else:
            def new_path() -> RegularisationPath:
                return RegularisationPath(apply, objective, should_stop=reporter.check_cancel)

            attempt, scaling = solve_on_paths(request, system, indices, reporter, new_path)
            solution, path = attempt.solution, attempt.path
        solver_info = {"algorithm": request.solver.algorithm, **solution.result.to_dict(),
                       "rhs_norm": system.b_norm}
        if scaling is not None:
            solver_info["scaling"] = scaling
        level = "info" if solution.result.converged else "warning"
        reporter.event(level, "solve", f"solver stopped: {solution.result.stop_reason}",
                       solver_summary(solver_info))
        warnings += solver_warnings(solver_info, stopped_by_path=auto)

    with reporter.phase("step_search"):
        if path is None:  # fixed: the caller's α on the full solve, nothing chosen or scored
            delta, path_json = solution.delta, None
            curve = ScaleCurve("fixed", (ScalePoint(request.step.scale, math.nan),), 0)
            baseline, improved = None, None
        else:
            chosen, delta, curve = path.finish()
            path_json = path.to_json(chosen, curve)
            # The unedited model (α = 0) on the same objective: a path whose best (k, α) does
            # no better changes nothing useful, and the user must hear about it.
            baseline = objective(original)
            improved = curve.best.objective > baseline["objective"]
            path_json["baseline_objective"] = baseline["objective"]
            reporter.event("info", "step_search",
                           f"path chose iteration {chosen}, step scale α = {curve.scale:g}",
                           {"iteration": chosen, "scale": curve.scale,
                            "objective": curve.best.objective,
                            "baseline_objective": baseline["objective"]})
            if not improved:
                warnings += step_warnings({"improved": improved})
                reporter.event("warning", "step_search", warnings[-1]["message"],
                               {"objective": curve.best.objective,
                                "baseline_objective": baseline["objective"]})
            for warning in retained_drop_warnings(baseline, curve.best.components):
                warnings.append(warning)
                reporter.event("warning", "step_search", warning["message"],
                               {"validation_accuracy": curve.best.components.get(
                                   "validation_accuracy"),
                                "baseline_validation_accuracy": baseline.get(
                                    "validation_accuracy")})
        apply(delta, curve.scale)

    with reporter.phase("evaluate"):
        edited_state = apply_update(model.state_dict, space, solution.indices.cpu(),
                                    delta.cpu(), curve.scale)
        check_finite_state(edited_state, "the edited weights (nothing is returned)")
        measure = Measurer(request, data, num_classes)
        before = measure(original)
        after = measure(edited)
        reporter.event("info", "evaluate", "metrics measured", {"score_before": before.get("score"),
                                                                 "score_after": after.get("score")})

    selection_per_layer = selection_info.pop("_per_layer", None)
    step = {**curve.to_json(), "baseline": baseline, "improved": improved}
    result = {
        "scale": curve.scale,
        "step": step,
        "path": path_json,
        "method": request.method,
        "selection": {**selection_info,
                      "per_layer": per_layer_changes(space, solution.indices.cpu(),
                                                     curve.scale * delta.cpu(),
                                                     selection_per_layer)},
        "solver": solver_info,
        "metrics": {"before": before, "after": after},
        "warnings": warnings,
        "timings": reporter.timings,
    }
    return EditOutcome(state_dict=edited_state, result=json_clean(result))


def objective_warnings(request: EditRequest, data) -> list[dict[str, str]]:
    """E9's documented fallback: a sample removal without a holdout set is tuned against the
    retained validation split, whose points the model trained on."""
    if request.edit.kind != "remove_samples" or data.holdout_x is not None:
        return []
    return [{"code": "no_holdout", "message": (
        "no step.holdout_dataset_id was given, so the sample-removal objective compares the "
        "forgotten points with the retained validation split (method.md E9's fallback): those "
        "are training points, so the edit is tuned to make the forgotten points look like "
        "retained ones, not like unseen data; name a holdout set of non-member data to tune "
        "it properly")}]


def solver_warnings(solver_info: dict, *, stopped_by_path: bool) -> list[dict[str, str]]:
    """``solver_not_converged`` (the rule and message of ``gif.result_warnings``) for a solve
    that ended without converging, unless the path stopped it on purpose (E9: stopping early
    is the regulariser, not a failure); ``zero_rhs`` for a right-hand side that is exactly 0."""
    from gif.result_warnings import solver_warnings as unconverged

    reason = solver_info.get("stop_reason")
    if reason == "zero_rhs":
        return [{"code": "zero_rhs", "message": (
            "the edited points' gradient is exactly zero (every one is fitted with a saturated "
            "softmax), so the update is zero and the model is unchanged")}]
    if stopped_by_path and reason == "callback":
        return []
    return unconverged(solver_info)
