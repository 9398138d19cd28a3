"""The six methods of method.md E10, one small function each, over the shared loop.

Each takes the model to start from (a working copy, trained in place), the training points, the
loop and the model spec, and returns the trained model, what the loop did and the method's own
details. Recipes: the SalUn repository (OPTML-Group/Unlearn-Saliency, ``Classification/unlearn``
and ``generate_mask.py``) and Unlearn-Sparse (Jia et al., NeurIPS 2023); see
``gif.request.RECIPES`` for the hyper-parameters. Every method trains in train mode (BatchNorm
statistics follow the batches), as those recipes do; salun's mask is computed in eval mode, as
``generate_mask.py`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gif.spec import ModelSpec
from gif.unlearning.loop import (
    FrozenEntries,
    TrainingLoop,
    TrainingPoints,
    TrainingRun,
    mixed_epochs,
    random_wrong_labels,
    shuffled_epochs,
)


@dataclass
class MethodOutcome:
    model: nn.Module
    run: TrainingRun
    details: dict[str, Any] = field(default_factory=dict)


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, _fraction: float):
    return F.cross_entropy(model(x), y)


def finetune(model: nn.Module, points: TrainingPoints, loop: TrainingLoop,
             spec: ModelSpec) -> MethodOutcome:
    """FT (E10): minimise the cross-entropy of the retained data only (relabel: of the
    corrected data), so the forgotten points fade by catastrophic forgetting
    (Unlearn-Sparse / SalUn ``unlearn/FT.py``: 10 epochs at lr 0.01)."""
    idx, labels = points.fitted()
    plan = shuffled_epochs(points, idx, labels, loop.training.batch_size, loop.generator,
                           "retained points" if points.corrected is None else "corrected points")
    return MethodOutcome(model, loop.run(model, plan, cross_entropy))


def gradient_ascent(model: nn.Module, points: TrainingPoints, loop: TrainingLoop,
                    spec: ModelSpec) -> MethodOutcome:
    """GA (E10): ascend the cross-entropy of the forgotten points, i.e. minimise
    ``−CE(forgotten)``; one epoch is one pass over the forgotten points, as in the recipe
    (``unlearn/GA.py``: 5 epochs at lr 1e-4). The reported loss is therefore negative."""
    labels = points.labels
    plan = shuffled_epochs(points, points.forgotten, labels, loop.training.batch_size,
                           loop.generator, "forgotten points")

    def ascent(model: nn.Module, x: torch.Tensor, y: torch.Tensor, _fraction: float):
        return -F.cross_entropy(model(x), y)

    return MethodOutcome(model, loop.run(model, plan, ascent))


def _forget_labels(points: TrainingPoints, generator: torch.Generator) -> Callable:
    """Labels of the forgotten points in the RL data: random wrong ones (removal), or the
    corrected ones (relabel: RL-style relabel trains the new labels in)."""
    if points.corrected is not None:
        corrected = points.corrected
        return lambda idx: corrected[torch.as_tensor(idx)]
    labels, num_classes = points.labels, points.num_classes
    return lambda idx: random_wrong_labels(labels[torch.as_tensor(idx)], num_classes, generator)


def random_labels(model: nn.Module, points: TrainingPoints, loop: TrainingLoop,
                  spec: ModelSpec) -> MethodOutcome:
    """RL (E10): train on the forgotten points with random wrong labels mixed with the
    retained data (the SalUn repository's ``unlearn/RL.py`` mixed loader: 10 epochs at 0.01);
    for relabel, on the edited points with their corrected labels."""
    training = loop.training
    plan = mixed_epochs(points, _forget_labels(points, loop.generator), training.retain_share,
                        training.batch_size, loop.generator)
    return MethodOutcome(model, loop.run(model, plan, cross_entropy),
                         {"retain_share": training.retain_share})


def saliency_mask(model: nn.Module, points: TrainingPoints, ratio: float,
                  batch_size: int, should_stop=None) -> dict[str, torch.Tensor]:
    """SalUn's weight saliency (Fan et al., ICLR 2024, eq. 6; ``generate_mask.py``): the
    ``floor(ratio · p)`` entries of θ with the largest ``|∇_θ mean CE(forgotten)|``, ranked over
    all parameters at once, in eval mode. Returns a boolean mask per parameter (True: moves);
    ``should_stop`` (cancel) is polled before every gradient batch."""
    from gif.hvp import mean_loss_grad
    from gif.params import ParamSpace

    space = ParamSpace.from_model(model)
    x = points.inputs(points.forgotten)
    y = points.labels[torch.as_tensor(points.forgotten)]
    saliency = mean_loss_grad(model, x, y, batch_size=batch_size, should_stop=should_stop).abs()
    count = max(1, int(ratio * space.size))
    chosen = torch.zeros(space.size, dtype=torch.bool, device=saliency.device)
    chosen[torch.topk(saliency, count, sorted=False).indices] = True
    return {name: mask.cpu() for name, mask in space.unflatten(chosen).items()}


def salun(model: nn.Module, points: TrainingPoints, loop: TrainingLoop,
          spec: ModelSpec) -> MethodOutcome:
    """SalUn (E10): random labels (as ``random_labels``) restricted to the salient parameters
    (the SalUn README: RL, 10 epochs at lr 0.013, mask of the top 50 %); the rest stay exactly
    at their values. The mask is the ``select`` phase."""
    training = loop.training
    with loop.reporter.phase("select"):
        movable = saliency_mask(model, points, training.mask_ratio, training.batch_size,
                                loop.reporter.should_stop)
        num_selected = int(sum(int(mask.sum()) for mask in movable.values()))
        total = sum(mask.numel() for mask in movable.values())
        per_layer = [{"name": name, "num_parameters": mask.numel(),
                      "num_selected": int(mask.sum()),
                      "ratio": float(mask.double().mean())} for name, mask in movable.items()]
        loop.reporter.event("info", "select", f"saliency mask: {num_selected:,} of {total:,} "
                            "parameters move", {"num_selected": num_selected,
                                                "mask_ratio": training.mask_ratio})
    plan = mixed_epochs(points, _forget_labels(points, loop.generator), training.retain_share,
                        training.batch_size, loop.generator)
    run = loop.run(model, plan, cross_entropy, FrozenEntries(model, movable))
    return MethodOutcome(model, run, {"mask": {"num_selected": num_selected,
                                               "num_parameters": total,
                                               "ratio": num_selected / total,
                                               "per_parameter": per_layer},
                                      "retain_share": training.retain_share})


def l1_sparse(model: nn.Module, points: TrainingPoints, loop: TrainingLoop,
              spec: ModelSpec) -> MethodOutcome:
    """l1-sparse (E10; Jia et al., NeurIPS 2023, "sparsity-aware unlearning"): FT on the
    retained data with ``α_t ‖θ‖₁`` added, over every parameter, ``α_t = α (1 − t)`` with ``t``
    the share of the schedule done (Unlearn-Sparse ``FT_l1``: linear decay per epoch)."""
    alpha = loop.training.l1_alpha
    idx, labels = points.fitted()
    plan = shuffled_epochs(points, idx, labels, loop.training.batch_size, loop.generator,
                           "retained points")

    def penalised(model: nn.Module, x: torch.Tensor, y: torch.Tensor, fraction: float):
        l1 = sum(p.abs().sum() for p in model.parameters())
        return F.cross_entropy(model(x), y) + alpha * (1.0 - fraction) * l1

    return MethodOutcome(model, loop.run(model, plan, penalised), {"l1_alpha": alpha})


def retrain(model: nn.Module, points: TrainingPoints, loop: TrainingLoop,
            spec: ModelSpec) -> MethodOutcome:
    """Retraining (E10), the exact unlearning every metric is judged against: a fresh model
    (``torch.manual_seed(seed)`` then ``gif.registry.build_model(spec)``) trained on the
    retained data (relabel: the corrected data) with the user's recipe, batches drawn as every
    method draws them. ``model`` is only used for its device and dtype."""
    from gif.registry import build_model

    parameter = next(model.parameters())
    torch.manual_seed(loop.seed)  # the caller forks the global RNG around the whole method
    fresh = build_model(spec).to(device=parameter.device, dtype=parameter.dtype)
    outcome = finetune(fresh, points, loop, spec)
    return MethodOutcome(fresh, outcome.run,
                         {"initialisation": "torch.manual_seed(seed); build_model(spec)"})


METHODS: dict[str, Callable[[nn.Module, TrainingPoints, TrainingLoop, ModelSpec],
                            MethodOutcome]] = {
    "finetune": finetune,
    "gradient_ascent": gradient_ascent,
    "random_labels": random_labels,
    "salun": salun,
    "l1_sparse": l1_sparse,
    "retrain": retrain,
}
