"""The ``load`` phase every edit method shares: the model rebuilt from its spec and the request
checked against the data, with the seeded index plan and its tensors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gif.edit.hooks import LoadedModel
from gif.edit.plan import EditData, IndexPlan, plan_indices
from gif.edit.result import check_finite_state
from gif.edit.validate import (
    num_classes_of,
    resolve_device,
    validate_holdout,
    validate_request,
)
from gif.request import EditRequest


@dataclass(frozen=True)
class PreparedEdit:
    """What an edit starts from: the device, the unedited model on it (eval mode, a private
    copy of the input weights), the architecture's input form, the number of classes, the
    index plan and its tensors."""

    device: torch.device
    original: nn.Module
    flat_input: bool
    num_classes: int
    plan: IndexPlan
    data: EditData


def prepare_edit(request: EditRequest, model: LoadedModel, train,
                 eval_sets: Mapping[str, Any], holdout=None) -> PreparedEdit:
    """Rebuild the model, refuse non-finite weights and a request the data cannot satisfy
    (``GifError`` subclasses naming the field), and draw the plan (E1, E9). The input state
    dict is copied, never mutated. ``holdout`` is the dataset ``step.holdout_dataset_id`` names
    (non-members for the sample-removal objective, E9), or None."""
    from gif.checkpoint import load_state_dict_strict
    from gif.registry import build_model, get_architecture

    device = resolve_device(request.device)
    check_finite_state(model.state_dict, "the input weights")
    arch = get_architecture(model.spec.arch)
    original = build_model(model.spec)
    load_state_dict_strict(original, {k: v.detach().clone() for k, v in model.state_dict.items()})
    original = original.to(device).eval()
    num_classes = num_classes_of(model.spec, original, train, arch.flat_input)
    validate_request(request, model.spec, train, eval_sets, num_classes)
    validate_holdout(request, model.spec, holdout, num_classes)
    plan = plan_indices(request, train, holdout)
    data = EditData.build(request, model.spec, arch.flat_input, train, eval_sets, plan, holdout)
    return PreparedEdit(device, original, arch.flat_input, num_classes, plan, data)
