"""Measuring a model: the step objectives of method.md E9 on the validation split, and the
metrics of api.md (Metrics) on every named set."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gif import metrics as M
from gif.edit.plan import EditData
from gif.request import REMOVAL_KINDS, EditRequest, RemoveClass


def step_objective(kind: str, data: EditData, num_classes: int):
    """E9's default objectives on the validation split (never an evaluation set)."""
    batch = 512

    def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        return M.evaluate(model, x, y, batch_size=batch, num_classes=num_classes)["accuracy"]

    def objective(model: nn.Module) -> dict[str, float]:
        validation = accuracy(model, data.val_x, data.val_y)
        if kind in REMOVAL_KINDS:
            forget = accuracy(model, data.u_x, data.u_y)
            return {"objective": M.score(kind, forget, validation), "forget_accuracy": forget,
                    "validation_accuracy": validation}
        corrected = accuracy(model, data.u_x, data.u_new_y)
        return {"objective": M.score(kind, corrected, validation),
                "corrected_accuracy": corrected, "validation_accuracy": validation}

    return objective


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

