"""Measuring a model: the step objectives of method.md E9 on the validation split, and the
metrics of api.md (Metrics) on every named set."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gif import metrics as M
from gif.edit.plan import EditData
from gif.request import REMOVAL_KINDS, EditRequest, RemoveClass

PRUNE_CHUNK = 256
"""Points scored between two checks of a bounded objective against the search's floor
(``accuracy_objective``): small enough that an α whose forgotten points are still mostly
recognised is dropped after a quarter of the scoring, large enough that a forward pass keeps
its speed (TinyNet on one thread: about 5 % more per point than at 512)."""


def step_objective(kind: str, data: EditData, num_classes: int):
    """E9's objectives on the validation split (never an evaluation set), each a
    ``gif.step.Objective``.

    Class removal: ``H(1 − forget accuracy, validation accuracy)``; relabel:
    ``H(corrected accuracy, validation accuracy)`` (``accuracy_objective``, bounded); sample
    removal: ``sample_removal_objective``. The forgotten (edited) points are the edit sample
    ``U``."""
    batch = 512
    if kind == "remove_samples":
        return sample_removal_objective(data, batch)
    if kind in REMOVAL_KINDS:
        edited = ("forget_accuracy", data.u_x, data.u_y)
    else:
        edited = ("corrected_accuracy", data.u_x, data.u_new_y)
    return accuracy_objective(kind, [edited, ("validation_accuracy", data.val_x, data.val_y)])


def accuracy_objective(kind: str, sets: list[tuple[str, torch.Tensor, torch.Tensor]],
                       chunk: int = PRUNE_CHUNK):
    """E9's harmonic score ``M.score(kind, edited accuracy, validation accuracy)`` of the two
    ``sets`` (``(name, x, y)``: the edited points, then the validation split), scored
    ``chunk`` points at a time. After each chunk every accuracy is known to lie between its
    correct predictions so far and those plus every point not yet scored, over its size; the
    score is monotone in each accuracy (decreasing in a removal's forget accuracy, increasing
    in the others), so its largest value over those intervals bounds the objective. Once that
    bound is below ``floor`` the model cannot matter to the search (``gif.step``) and the
    objective returns ``pruned`` with the bound, and the accuracies it measured in full."""
    removal = kind in REMOVAL_KINDS
    names = [name for name, _, _ in sets]
    sizes = [len(y) for _, _, y in sets]

    def upper_bound(correct: list[int], seen: list[int]) -> float:
        low = [c / n for c, n in zip(correct, sizes, strict=True)]
        high = [(c + n - s) / n for c, s, n in zip(correct, seen, sizes, strict=True)]
        return M.score(kind, low[0] if removal else high[0], high[1])

    def measured(correct: list[int], seen: list[int]) -> dict[str, float]:
        """The accuracies of the sets scored in full."""
        return {name: c / n for name, c, s, n in zip(names, correct, seen, sizes, strict=True)
                if s == n}

    def objective(model: nn.Module, floor: float = -math.inf) -> dict[str, Any]:
        correct, seen = [0, 0], [0, 0]
        for position, (_, x, y) in enumerate(sets):
            for start in range(0, sizes[position], chunk):
                logits = M.predict_logits(model, x[start:start + chunk], batch_size=chunk)
                correct[position] += int((logits.argmax(1) == y[start:start + chunk]).sum())
                seen[position] += len(logits)
                if seen == sizes:
                    break  # all scored: the bound is the value itself
                bound = upper_bound(correct, seen)
                if bound < floor:
                    return {"objective": bound, "pruned": True, **measured(correct, seen)}
        accuracies = measured(correct, seen)
        return {"objective": M.score(kind, *accuracies.values()), **accuracies}

    return objective


def sample_removal_objective(data: EditData, batch: int = 512):
    """E9, sample removal: the forgotten points should look like data the model never trained
    on, not like wrong data. Objective ``H(validation accuracy, 1 − KS)`` with KS the
    two-sample Kolmogorov–Smirnov statistic between the losses of the forgotten points ``U``
    and those of the non-members: the holdout sample when the request names a holdout set,
    else (the documented fallback) the retained validation split."""
    from scipy.stats import ks_2samp

    if data.holdout_x is not None:
        reference_x, reference_y = data.holdout_x, data.holdout_y
    else:
        reference_x, reference_y = data.val_x, data.val_y

    def objective(model: nn.Module, floor: float = -math.inf) -> dict[str, float]:
        # never pruned: KS needs every loss (``floor`` is the gif.step.Objective protocol's)
        val_logits = M.predict_logits(model, data.val_x, batch_size=batch)
        forget_logits = M.predict_logits(model, data.u_x, batch_size=batch)
        validation = _accuracy(val_logits, data.val_y)
        forget_losses = _losses(forget_logits, data.u_y)
        if data.holdout_x is None:
            reference_losses = _losses(val_logits, data.val_y)
        else:
            reference_losses = _losses(
                M.predict_logits(model, reference_x, batch_size=batch), reference_y)
        if not (torch.isfinite(forget_losses).all() and torch.isfinite(reference_losses).all()):
            return {"objective": -math.inf, "validation_accuracy": validation}
        ks = float(ks_2samp(forget_losses.numpy(), reference_losses.numpy()).statistic)
        return {"objective": M.harmonic_mean(validation, 1.0 - ks),
                "forget_accuracy": _accuracy(forget_logits, data.u_y),
                "validation_accuracy": validation, "loss_ks": ks}

    return objective


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y.cpu()).double().mean()) if len(y) else math.nan


def _losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy (float64): what a loss-threshold membership attack sees."""
    return F.cross_entropy(logits.double(), y.long().cpu(), reduction="none")


class Measurer:
    """Metrics of one model on every named set (api.md, Metrics), plus score, MIA, ‖∇R‖."""

    def __init__(self, request: EditRequest, data: EditData, num_classes: int):
        self.request = request
        self.data = data
        self.num_classes = num_classes
        self.batch_size = max(request.solver.batch_size, 256)
        edit = request.edit
        self.removed_class = edit.class_ if isinstance(edit, RemoveClass) else None

    def __call__(self, model: nn.Module) -> dict[str, Any]:
        d, kind = self.data, self.request.edit.kind
        sets = {"forget": (d.forget_x, d.forget_y)}
        if d.forget_new_y is not None:
            sets["relabeled"] = (d.forget_x, d.forget_new_y)
        sets["retain"] = (d.retain_x, d.retain_y)
        out: dict[str, Any] = {}
        for name, (x, y) in sets.items():
            out[name] = self._evaluate(model, x, y, None)
        for name, (x, y) in d.evals.items():
            out[name] = self._evaluate(model, x, y, self.removed_class)
        out["score"] = self._score(kind, out)
        out["retained_grad_norm"] = M.retained_grad_norm(
            model, d.h_x, d.h_y, batch_size=self.request.solver.batch_size)
        if self.request.eval.mia:
            first = next(iter(d.evals.values()))
            out["mia"] = M.membership_inference(
                model, members=(d.retain_x, d.retain_y), non_members=first,
                targets=(d.forget_x, d.forget_y), batch_size=self.batch_size,
                seed=self.request.seed,
            )
        return out

    def _evaluate(self, model, x, y, removed_class):
        return M.evaluate(model, x, y, batch_size=self.batch_size, num_classes=self.num_classes,
                          removed_class=removed_class)

    def _score(self, kind: str, out: dict) -> float | None:
        """E9's harmonic score on the first evaluation set (None without one)."""
        if not self.data.evals:
            return None
        first = out[next(iter(self.data.evals))]
        if kind == "remove_class":
            removed = first["accuracy_removed_class"]
            remaining = first["accuracy_remaining_classes"]
            if removed is None or remaining is None:  # the eval set lacks one half: use forget
                removed, remaining = out["forget"]["accuracy"], first["accuracy"]
            return M.score(kind, removed, remaining)
        if kind == "remove_samples":
            return M.score(kind, out["forget"]["accuracy"], first["accuracy"])
        return M.score(kind, out["relabeled"]["accuracy"], first["accuracy"])

