"""Evaluation of a classifier before and after an edit (api.md, Metrics).

Every function here is pure: it takes a model and tensors that are already preprocessed
(``gif.data.prepare_inputs``), puts the model in eval mode for the duration of the call, and
returns plain Python numbers, so results are JSON-able as they are.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

MIA_METHOD = "svc_true_class_confidence"


class _EvalMode:
    """Context manager: eval mode (no dropout, frozen BatchNorm) restored to what it was."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.was_training = model.training

    def __enter__(self) -> nn.Module:
        self.model.eval()
        return self.model

    def __exit__(self, *exc) -> None:
        self.model.train(self.was_training)


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in model.parameters():
        return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.get_default_dtype()


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, *, batch_size: int) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in micro-batches, returned on the CPU in float32.

    Floating inputs are cast to the parameters' dtype (a float64 model gets float64 inputs)."""
    device, dtype = _model_device_dtype(model)
    if x.is_floating_point():
        x = x.to(dtype)
    with _EvalMode(model):
        chunks = [
            model(x[start : start + batch_size].to(device)).float().cpu()
            for start in range(0, len(x), batch_size)
        ]
    if not chunks:
        return torch.empty(0, 0)
    return torch.cat(chunks)


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    num_classes: int,
    removed_class: int | None = None,
) -> dict:
    """Accuracy, mean cross-entropy, per-class accuracy and count of ``model`` on ``(x, y)``.

    ``per_class_accuracy[c]`` is ``None`` when class ``c`` has no example in ``y`` (an
    accuracy of an empty set is undefined, not 0). With ``removed_class`` the result also has
    ``accuracy_removed_class`` (on the examples of that class) and
    ``accuracy_remaining_classes`` (on all the others), the two halves of class removal's
    score (method.md E9); either is ``None`` when its half is empty.
    """
    y = y.long().cpu()
    count = int(len(y))
    result: dict = {"count": count}
    if count == 0:
        result.update(accuracy=None, loss=None, per_class_accuracy=[None] * num_classes)
        if removed_class is not None:
            result.update(accuracy_remaining_classes=None, accuracy_removed_class=None)
        return result
    logits = predict_logits(model, x, batch_size=batch_size)
    correct = logits.argmax(dim=1) == y
    loss = torch.nn.functional.cross_entropy(logits.double(), y, reduction="mean")
    result["accuracy"] = float(correct.double().mean())
    result["loss"] = float(loss)
    result["per_class_accuracy"] = [
        _mean_or_none(correct[y == label]) for label in range(num_classes)
    ]
    if removed_class is not None:
        result["accuracy_removed_class"] = _mean_or_none(correct[y == removed_class])
        result["accuracy_remaining_classes"] = _mean_or_none(correct[y != removed_class])
    return result


def _mean_or_none(flags: torch.Tensor) -> float | None:
    return float(flags.double().mean()) if len(flags) else None


def harmonic_mean(a: float, b: float) -> float:
    """Harmonic mean of two numbers in [0, 1]; 0 when either is 0 (no division by zero)."""
    if a <= 0.0 or b <= 0.0:
        return 0.0
    return 2.0 * a * b / (a + b)


def score(edit_kind: str, edited_accuracy: float, other_accuracy: float) -> float:
    """method.md E9's harmonic objective, the one number an edit is judged (and tuned) by.

    - removal (``remove_class``, ``remove_samples``): ``edited_accuracy`` is the accuracy on
      the forgotten points (original labels), so the score is
      ``H(1 - edited_accuracy, other_accuracy)``: forget them, keep the rest.
    - ``relabel``: ``edited_accuracy`` is the accuracy on the edited points measured against
      their *corrected* labels, so the score is ``H(edited_accuracy, other_accuracy)``.
    """
    if edit_kind in ("remove_class", "remove_samples"):
        return harmonic_mean(1.0 - edited_accuracy, other_accuracy)
    if edit_kind == "relabel":
        return harmonic_mean(edited_accuracy, other_accuracy)
    raise ValueError(f"unknown edit kind {edit_kind!r}")


@torch.no_grad()
def true_class_confidence(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int
) -> torch.Tensor:
    """Softmax probability of each example's label: the MIA feature of SalUn / l1-sparse."""
    logits = predict_logits(model, x, batch_size=batch_size)
    probs = torch.softmax(logits.double(), dim=1)
    return probs.gather(1, y.long().cpu()[:, None]).squeeze(1)


def membership_inference(
    model: nn.Module,
    *,
    members: tuple[torch.Tensor, torch.Tensor],
    non_members: tuple[torch.Tensor, torch.Tensor],
    targets: tuple[torch.Tensor, torch.Tensor],
    batch_size: int,
    seed: int = 0,
    max_fit_samples: int = 2000,
) -> dict:
    """Membership-inference efficacy on the forget set (the SalUn / l1-sparse "MIA-efficacy").

    An RBF SVC (``C=3, gamma="auto"``, as in their ``SVC_MIA``) is fitted on the true-class
    confidence of ``members`` (retained training points, label 1) against ``non_members``
    (an evaluation set, label 0), both cut to the same size (at most ``max_fit_samples``, a
    seeded sample) so neither class dominates; it is then applied to ``targets`` (the
    forgotten points). The efficacy is the share of targets judged non-members: 1.0 means
    the edited model treats the forgotten points like data it never saw.
    """
    from sklearn.svm import SVC  # imported here: only runs when MIA is requested

    generator = np.random.default_rng(seed)
    fit_size = min(len(members[1]), len(non_members[1]), max_fit_samples)
    if fit_size < 2 or len(targets[1]) == 0:
        raise ValueError("membership inference needs at least 2 members, 2 non-members, 1 target")
    member_idx = np.sort(generator.choice(len(members[1]), fit_size, replace=False))
    non_member_idx = np.sort(generator.choice(len(non_members[1]), fit_size, replace=False))

    def feature(pair: tuple[torch.Tensor, torch.Tensor], idx=None) -> np.ndarray:
        x, y = pair if idx is None else (pair[0][idx], pair[1][idx])
        return true_class_confidence(model, x, y, batch_size=batch_size).numpy()[:, None]

    features = np.concatenate([feature(members, member_idx), feature(non_members, non_member_idx)])
    labels = np.concatenate([np.ones(fit_size), np.zeros(fit_size)])
    classifier = SVC(C=3, gamma="auto", kernel="rbf").fit(features, labels)
    judged_member = classifier.predict(feature(targets))
    return {
        "method": MIA_METHOD,
        "efficacy": float(1.0 - judged_member.mean()),
        "targets": int(len(judged_member)),
        "fit_samples_per_class": int(fit_size),
    }


def retained_grad_norm(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int
) -> float:
    """‖∇R_retained(θ)‖₂ over ``(x, y)``, the retained (or corrected) sample (method.md E1).

    The edit aims at ``∇R_new(θ̂ + Δ) = 0``, so this norm before and after the edit says how
    close to a stationary point of the new objective the edited model is. The gradient is
    ``gif.hvp.mean_loss_grad`` (E6's cross-entropy, eval mode, micro-batched).
    """
    from gif.hvp import mean_loss_grad

    gradient = mean_loss_grad(model, x, y, batch_size=batch_size)
    return float(torch.linalg.vector_norm(gradient.double()))
