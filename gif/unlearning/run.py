"""``run_training_edit``: an E10 method as an edit job, with GIF's lifecycle and metrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from gif.edit.hooks import EditHooks, EditOutcome, LoadedModel, Reporter
from gif.edit.measure import Measurer
from gif.edit.plan import IndexPlan
from gif.edit.prepare import prepare_edit
from gif.edit.result import check_finite_state, copy_model, json_clean
from gif.errors import InvalidRequest
from gif.request import EditRequest, RemoveClass
from gif.unlearning.baselines import METHODS, MethodOutcome
from gif.unlearning.loop import TrainingLoop, TrainingPoints

RETAIN_DROP_WARNING = 0.10  # retained accuracy falling by more than this is worth a warning
CLASS_KEPT_WARNING = 0.10  # a removed class still recognised on more of its points than this


def run_training_edit(
    request: EditRequest,
    model: LoadedModel,
    train,
    eval_sets: Mapping[str, Any],
    hooks: EditHooks | None = None,
) -> EditOutcome:
    """Edit ``model`` with the E10 method ``request.method`` (``gif.edit.run_edit`` dispatches
    here): the same validation, index plan, metrics (``Measurer``), progress, events and
    cancellation as GIF, phases ``load`` → (``select``: salun's mask) → ``train`` →
    ``evaluate``. The input state dict is never mutated; the output has its keys and dtypes
    (BatchNorm buffers as the training left them). Raises a ``GifError`` on every failure."""
    reporter = Reporter(hooks or EditHooks())
    with reporter.phase("load"):
        prepared = prepare_edit(request, model, train, eval_sets)
        device, original, num_classes = prepared.device, prepared.original, prepared.num_classes
        if request.method in ("random_labels", "salun") and num_classes < 2:
            raise InvalidRequest(f"{request.method} draws wrong labels: the model needs at "
                                 f"least 2 classes, it has {num_classes}", loc=("method",))
        points = training_points(model.spec, prepared.flat_input, train, prepared.plan,
                                 num_classes)
        reporter.event("info", "load", "model and data ready", {
            "device": str(device), "method": request.method, "num_classes": num_classes,
            "edited_points": len(prepared.plan.edited), "retained_points": len(points.retained),
            "training": request.training.model_dump(),
        })

    loop = TrainingLoop(request.training, reporter, device,
                        torch.Generator().manual_seed(request.seed), request.method,
                        request.seed)
    # Dropout and any other use of the global RNG during training is seeded too, without
    # changing the caller's RNG state.
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(request.seed)
        outcome = METHODS[request.method](copy_model(original), points, loop, model.spec)

    with reporter.phase("evaluate"):
        edited_state = state_like(model.state_dict, outcome.model)
        check_finite_state(edited_state, "the trained weights (nothing is returned)")
        measure = Measurer(request, prepared.data, num_classes)
        before = measure(original)
        reporter.check_cancel()
        after = measure(outcome.model)
        reporter.event("info", "evaluate", "metrics measured", {
            "score_before": before.get("score"), "score_after": after.get("score")})

    result = {
        "method": request.method,
        "training": training_section(request, outcome),
        "metrics": {"before": before, "after": after},
        "timings": reporter.timings,
        "warnings": training_warnings(request, outcome, before, after),
    }
    for warning in result["warnings"]:
        reporter.event("warning", "evaluate", warning["message"], {"code": warning["code"]})
    return EditOutcome(state_dict=edited_state, result=json_clean(result))


def training_points(spec, flat: bool, train, plan: IndexPlan,
                    num_classes: int) -> TrainingPoints:
    """The train dataset split as the methods use it (the same ``E`` as the plan's)."""
    from gif.data import prepare_inputs

    labels = train.y.long()
    corrected = None
    if plan.new_labels is not None:
        corrected = labels.clone()
        corrected[torch.as_tensor(plan.edited)] = torch.as_tensor(plan.new_labels)
    return TrainingPoints(
        x=train.x, labels=labels, corrected=corrected,
        retained=np.setdiff1d(np.arange(plan.num_train), plan.edited),
        forgotten=plan.edited,
        prepare=lambda rows: prepare_inputs(rows, spec.input, flat),
        num_classes=num_classes,
    )


def state_like(reference: Mapping[str, torch.Tensor], model: nn.Module) -> dict:
    """The trained model's full state dict (buffers too) on the CPU, in the keys and dtypes of
    the input checkpoint."""
    trained = model.state_dict()
    return {key: trained[key].detach().to(device="cpu", dtype=value.dtype).clone()
            for key, value in reference.items()}


def training_section(request: EditRequest, outcome: MethodOutcome) -> dict:
    """The result's ``training``: the effective recipe, what the loop did, the loss history."""
    return {"recipe": request.training.model_dump(), **outcome.run.to_json(),
            **outcome.details}


def training_warnings(request: EditRequest, outcome: MethodOutcome, before: dict,
                      after: dict) -> list[dict[str, str]]:
    """``[{code, message}]`` a user should read before trusting the edit."""
    warnings = []
    training, run = request.training, outcome.run
    if run.stopped_by == "budget_s" and training.epochs and run.epochs < training.epochs:
        exact = (" This is not an exact retrain: the recipe did not finish."
                 if request.method == "retrain" else "")
        warnings.append({"code": "budget_reached", "message": (
            f"training.budget_s ({training.budget_s:g} s) stopped the training after "
            f"{run.epochs:.3g} of {training.epochs} epochs.{exact}")})
    retain_before, retain_after = before["retain"]["accuracy"], after["retain"]["accuracy"]
    if retain_after is not None and retain_after < retain_before - RETAIN_DROP_WARNING:
        warnings.append({"code": "retain_accuracy_dropped", "message": (
            f"accuracy on the retained sample fell from {retain_before:.3f} to "
            f"{retain_after:.3f}: try a smaller training.lr or fewer epochs")})
    if isinstance(request.edit, RemoveClass) and request.method != "retrain":
        kept = after["forget"]["accuracy"]
        if kept is not None and kept > CLASS_KEPT_WARNING:
            warnings.append({"code": "class_not_forgotten", "message": (
                f"the removed class is still recognised on {kept:.1%} of its training points: "
                "try more epochs or a larger training.lr")})
    return warnings
