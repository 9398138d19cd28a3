"""``run_edit``: the one edit function (see ``gif.edit``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from gif.edit.hooks import EditHooks, EditOutcome, LoadedModel, Reporter
from gif.edit.measure import Measurer, step_objective
from gif.edit.plan import EditData, plan_indices
from gif.edit.result import (
    check_finite_state,
    copy_model,
    full_update,
    json_clean,
    load_flat,
    per_layer_changes,
    solver_summary,
)
from gif.edit.update import select_target, solve_update
from gif.edit.validate import num_classes_of, resolve_device, validate_request
from gif.request import EditRequest
from gif.step import fixed_scale, search_scale


def run_edit(
    request: EditRequest,
    model: LoadedModel,
    train,
    eval_sets: Mapping[str, Any],
    hooks: EditHooks | None = None,
) -> EditOutcome:
    """Edit ``model`` as ``request`` says, using ``train`` (``gif.data.ArrayDataset``).

    ``eval_sets`` (name → ``ArrayDataset``) are only evaluated, never used for any choice; the
    first one carries the ``score``. Raises a ``GifError`` subclass on every failure.
    """
    if request.trains:  # the E10 training methods: their own loop, the same lifecycle
        from gif.unlearning import run_training_edit

        return run_training_edit(request, model, train, eval_sets, hooks)
    from gif.checkpoint import load_state_dict_strict
    from gif.params import ParamSpace, apply_update
    from gif.registry import build_model, get_architecture

    reporter = Reporter(hooks or EditHooks())
    with reporter.phase("load"):
        device = resolve_device(request.device)
        check_finite_state(model.state_dict, "the input weights")
        arch = get_architecture(model.spec.arch)
        original = build_model(model.spec)
        own_copy = {k: v.detach().clone() for k, v in model.state_dict.items()}
        load_state_dict_strict(original, own_copy)
        original = original.to(device).eval()
        space = ParamSpace.from_model(original)
        num_classes = num_classes_of(model.spec, original, train, arch.flat_input)
        validate_request(request, model.spec, train, eval_sets, num_classes)
        plan = plan_indices(request, train)
        data = EditData.build(request, model.spec, arch.flat_input, train, eval_sets, plan)
        reporter.event("info", "load", "model and data ready", {
            "device": str(device), "num_parameters": space.size, "num_classes": num_classes,
            "edited_points": len(plan.edited), "edit_sample": len(plan.edit_sample),
            "hessian_sample": len(plan.hessian), "validation_split": len(plan.validation),
        })

    with reporter.phase("select"):
        indices, selection_info = select_target(request, original, space, data)
        reporter.event("info", "select", f"{len(indices):,} of {space.size:,} parameters move",
                       {"num_selected": len(indices), "criterion": request.selection.criterion})

    with reporter.phase("solve"):
        solution, b_norm = solve_update(request, original, space, indices, data, plan, reporter)
        solver_info = {"algorithm": request.solver.algorithm, **solution.result.to_dict(),
                       "rhs_norm": b_norm}
        level = "info" if solution.result.converged else "warning"
        reporter.event(level, "solve", f"solver stopped: {solution.result.stop_reason}",
                       solver_summary(solver_info))

    with reporter.phase("step_search"):
        edited = copy_model(original)
        theta_hat = space.flatten(dict(original.named_parameters())).detach()
        update = full_update(solution.indices, solution.delta, space.size, theta_hat)

        def apply(alpha: float) -> nn.Module:
            load_flat(edited, space, theta_hat + alpha * update)
            return edited

        objective = step_objective(request.edit.kind, data, num_classes)
        if request.step.mode == "auto":
            curve = search_scale(apply, objective, should_stop=reporter.check_cancel)
        else:
            curve = fixed_scale(apply, objective, request.step.scale)
        apply(curve.scale)
        # The unedited model (α = 0) on the same objective: a search whose best α does no
        # better is an edit that changes nothing useful, and the user must hear about it.
        baseline = objective(original)
        improved = curve.best.objective > baseline["objective"]
        reporter.event("info", "step_search", f"step scale α = {curve.scale:g}",
                       {"scale": curve.scale, "objective": curve.best.objective,
                        "baseline_objective": baseline["objective"]})
        if not improved:
            reporter.event("warning", "step_search",
                           "no step improved the validation objective over the unedited model "
                           f"({curve.best.objective:.4g} vs {baseline['objective']:.4g}): the "
                           "edit barely changes the model; try a larger selection.ratio, more "
                           "solver iterations or another method",
                           {"objective": curve.best.objective,
                            "baseline_objective": baseline["objective"]})

    with reporter.phase("evaluate"):
        edited_state = apply_update(model.state_dict, space, solution.indices.cpu(),
                                    solution.delta.cpu(), curve.scale)
        check_finite_state(edited_state, "the edited weights (nothing is returned)")
        measure = Measurer(request, data, num_classes)
        before = measure(original)
        after = measure(edited)
        reporter.event("info", "evaluate", "metrics measured", {"score_before": before.get("score"),
                                                                 "score_after": after.get("score")})

    selection_per_layer = selection_info.pop("_per_layer", None)
    result = {
        "scale": curve.scale,
        "step": {**curve.to_json(), "baseline": baseline, "improved": improved},
        "method": request.method,
        "selection": {**selection_info,
                      "per_layer": per_layer_changes(space, solution.indices.cpu(),
                                                     curve.scale * solution.delta.cpu(),
                                                     selection_per_layer)},
        "solver": solver_info,
        "metrics": {"before": before, "after": after},
        "timings": reporter.timings,
    }
    return EditOutcome(state_dict=edited_state, result=json_clean(result))

