"""Everything that makes a request impossible on the given data, checked before any work."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from gif import metrics as M
from gif.errors import InvalidRequest
from gif.request import RESERVED_SET_NAMES, EditRequest, Relabel, RemoveClass
from gif.spec import ModelSpec

MIN_UNEDITED = 2  # one point for the step's validation split, one for the Hessian sample


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise InvalidRequest(f"device {name!r} is not available here ({count} CUDA devices)",
                                 loc=("device",))
    return device


def num_classes_of(spec: ModelSpec, model: nn.Module, train, flat_input: bool) -> int:
    """Number of outputs of the model, read from one forward pass on one training point."""
    from gif.data import check_dataset_fits, prepare_inputs

    check_dataset_fits(spec, train)
    if train.num_samples == 0:
        raise InvalidRequest("the training dataset is empty", loc=("train_dataset_id",))
    x = prepare_inputs(train.x[:1], spec.input, flat_input)
    logits = M.predict_logits(model, x, batch_size=1)
    return int(logits.shape[1])


def validate_request(request: EditRequest, spec: ModelSpec, train, eval_sets: Mapping,
                     num_classes: int) -> None:
    """Everything that makes a request impossible on this data → ``InvalidRequest`` with loc."""
    from gif.data import check_dataset_fits

    n = train.num_samples
    edit = request.edit
    labels = train.y
    if isinstance(edit, RemoveClass):
        if edit.class_ >= num_classes:
            raise InvalidRequest(f"class {edit.class_} is outside the model's labels "
                                 f"0..{num_classes - 1}", loc=("edit", "class"))
        count = int((labels == edit.class_).sum())
        if count == 0:
            raise InvalidRequest(f"class {edit.class_} has no point in the training dataset",
                                 loc=("edit", "class"))
        if n - count < MIN_UNEDITED:
            raise InvalidRequest(f"removing class {edit.class_} leaves {n - count} training "
                                 f"points; at least {MIN_UNEDITED} must stay (the Hessian and "
                                 f"the step's validation split come from them)",
                                 loc=("edit", "class"))
    else:
        bad = [i for i in edit.indices if i >= n]
        if bad:
            raise InvalidRequest(f"{len(bad)} indices are >= the dataset size {n} "
                                 f"(first: {bad[0]})", loc=("edit", "indices"))
        if n - len(edit.indices) < MIN_UNEDITED:
            raise InvalidRequest(f"the edit leaves {n - len(edit.indices)} training points "
                                 f"untouched; at least {MIN_UNEDITED} must stay (the Hessian "
                                 f"and the step's validation split come from them)",
                                 loc=("edit", "indices"))
    if isinstance(edit, Relabel):
        bad = [label for label in edit.labels if label >= num_classes]
        if bad:
            raise InvalidRequest(f"label {bad[0]} is outside the model's labels "
                                 f"0..{num_classes - 1}", loc=("edit", "labels"))
        old = labels[torch.as_tensor(edit.indices)]
        if bool((old == torch.as_tensor(edit.labels)).all()):
            raise InvalidRequest("every new label equals the current one: nothing to relabel",
                                 loc=("edit", "labels"))
    for name, dataset in eval_sets.items():
        if name in RESERVED_SET_NAMES:
            raise InvalidRequest(f"evaluation set name {name!r} is reserved for the edit's own "
                                 f"metrics ({', '.join(RESERVED_SET_NAMES)}); choose another",
                                 loc=("eval", "datasets", name))
        check_dataset_fits(spec, dataset, loc=("eval", "datasets", name))
        if dataset.num_samples == 0:
            raise InvalidRequest(f"evaluation set {name!r} is empty",
                                 loc=("eval", "datasets", name))
    if request.eval.mia and not eval_sets:
        raise InvalidRequest("membership inference needs an evaluation set (the non-members)",
                             loc=("eval", "mia"))



def validate_holdout(request: EditRequest, spec: ModelSpec, holdout, num_classes: int) -> None:
    """The holdout set of ``step.holdout_dataset_id`` (E9): given when named (the E10 training
    methods take no step and ignore it), of the model's input shape, non-empty, labels inside
    the model's range → else ``InvalidRequest``."""
    from gif.data import check_dataset_fits

    loc = ("step", "holdout_dataset_id")
    if holdout is None:
        if request.step.holdout_dataset_id is not None and not request.trains:  # E10: no step
            raise InvalidRequest(f"the holdout set {request.step.holdout_dataset_id!r} was "
                                 "named but not given to the edit", loc=loc)
        return
    check_dataset_fits(spec, holdout, loc=loc)
    if holdout.num_samples == 0:
        raise InvalidRequest("the holdout set is empty", loc=loc)
    top = int(holdout.y.max())
    if top >= num_classes:
        raise InvalidRequest(f"the holdout set has label {top}, outside the model's labels "
                             f"0..{num_classes - 1}", loc=loc)
