"""Seeded index sets of one edit and the preprocessed tensors built from them (see
``gif.edit``'s docstring for ``E``, ``U``, the validation split and the Hessian sample)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from gif.request import REMOVAL_KINDS, EditRequest, Relabel, RemoveClass
from gif.spec import ModelSpec

MAX_VALIDATION = 1024
"""The validation split is ``step.validation_fraction`` of the unedited points, at most this many
(docs/defaults.md): the path scores every candidate ``(k, α)`` on it with forward passes, and
1,024 points resolve accuracy to ~1.5 points (one s.e. at 80 %), finer than the choices differ."""
HOLDOUT_SAMPLES = 1024
"""Points of ``step.holdout_dataset_id`` the sample-removal objective compares the forgotten
points' losses with (E9): KS over 1,024 points has a standard error of ~0.03."""


@dataclass(frozen=True)
class IndexPlan:
    """Seeded index sets of one edit (see the module docstring)."""

    edited: np.ndarray  # E
    edit_sample: np.ndarray  # U ⊂ E
    new_labels: np.ndarray | None  # relabel: corrected label of each point of E
    validation: np.ndarray  # step-search split of D \ E (empty for step.mode = fixed)
    hessian: np.ndarray  # points of H's sample (may include E for relabel)
    retain: np.ndarray  # the `retain` metrics sample of D \ E
    num_train: int
    holdout: np.ndarray | None = None  # the sample of the holdout set (E9), if one is given


def plan_indices(request: EditRequest, train, holdout=None) -> IndexPlan:
    """Draw ``E``, ``U``, the validation split, the Hessian and the retain sample (E1, E9), and
    the holdout sample when a holdout set is given.

    ``step.mode = fixed`` chooses nothing, so it holds out no validation split: the Hessian
    sample comes from every unedited point, and with ``hessian_samples: null`` ``H`` is that of
    all retained (corrected) points, as E1 defines it (method.md check 7)."""
    rng = np.random.default_rng(request.seed)
    n = train.num_samples
    labels = train.y.cpu().numpy()
    edit = request.edit
    new_labels = None
    if isinstance(edit, RemoveClass):
        edited = np.flatnonzero(labels == edit.class_)
    elif isinstance(edit, Relabel):
        order = np.argsort(np.asarray(edit.indices))
        edited = np.asarray(edit.indices, dtype=np.int64)[order]
        new_labels = np.asarray(edit.labels, dtype=np.int64)[order]
    else:
        edited = np.sort(np.asarray(edit.indices, dtype=np.int64))
    edit_sample = _sample(rng, edited, request.solver.edit_samples)
    rest = np.setdiff1d(np.arange(n), edited)
    shuffled = rng.permutation(rest)
    if request.step.mode == "fixed":
        n_validation = 0
    else:
        n_validation = min(max(1, round(request.step.validation_fraction * len(rest))),
                           len(rest) - 1, MAX_VALIDATION)
    validation = np.sort(shuffled[:n_validation])
    pool = shuffled[n_validation:]
    hessian_source = pool if edit.kind in REMOVAL_KINDS else np.concatenate([pool, edited])
    hessian = _sample(rng, hessian_source, request.solver.hessian_samples)
    retain = _sample(rng, rest, request.eval.retain_samples)
    holdout_sample = (None if holdout is None else
                      _sample(rng, np.arange(holdout.num_samples), HOLDOUT_SAMPLES))
    return IndexPlan(edited, edit_sample, new_labels, validation, hessian, retain, n,
                     holdout_sample)


def _sample(rng: np.random.Generator, population: np.ndarray, size: int | None) -> np.ndarray:
    """A sorted seeded sample without replacement; the whole population when it is small enough."""
    if size is None or size >= len(population):
        return np.sort(population)
    return np.sort(rng.choice(population, size=size, replace=False))


@dataclass
class EditData:
    """Preprocessed tensors (CPU, float) of every set the edit touches, built once."""

    u_x: torch.Tensor
    u_y: torch.Tensor  # original labels of U
    u_new_y: torch.Tensor | None  # corrected labels of U (relabel)
    h_x: torch.Tensor
    h_y: torch.Tensor  # labels the edited model should fit (corrected for relabel)
    val_x: torch.Tensor
    val_y: torch.Tensor
    forget_x: torch.Tensor
    forget_y: torch.Tensor
    forget_new_y: torch.Tensor | None
    retain_x: torch.Tensor
    retain_y: torch.Tensor
    evals: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    holdout_x: torch.Tensor | None = None  # non-members for the sample-removal objective (E9)
    holdout_y: torch.Tensor | None = None

    @classmethod
    def build(cls, request: EditRequest, spec: ModelSpec, flat: bool, train,
              eval_sets: Mapping, plan: IndexPlan, holdout=None) -> EditData:
        from gif.data import prepare_inputs

        def inputs(dataset, idx: np.ndarray) -> torch.Tensor:
            rows = dataset.x[torch.as_tensor(idx, dtype=torch.long)]
            return prepare_inputs(rows, spec.input, flat)

        y = train.y.long()
        corrected = y.clone()
        if plan.new_labels is not None:
            corrected[torch.as_tensor(plan.edited)] = torch.as_tensor(plan.new_labels)

        def labels(source: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
            return source[torch.as_tensor(idx, dtype=torch.long)]

        relabel = plan.new_labels is not None
        return cls(
            u_x=inputs(train, plan.edit_sample), u_y=labels(y, plan.edit_sample),
            u_new_y=labels(corrected, plan.edit_sample) if relabel else None,
            h_x=inputs(train, plan.hessian), h_y=labels(corrected, plan.hessian),
            val_x=inputs(train, plan.validation), val_y=labels(y, plan.validation),
            forget_x=inputs(train, plan.edited), forget_y=labels(y, plan.edited),
            forget_new_y=labels(corrected, plan.edited) if relabel else None,
            retain_x=inputs(train, plan.retain), retain_y=labels(y, plan.retain),
            evals={name: (prepare_inputs(ds.x, spec.input, flat), ds.y.long())
                   for name, ds in eval_sets.items()},
            holdout_x=None if plan.holdout is None else inputs(holdout, plan.holdout),
            holdout_y=None if plan.holdout is None else labels(holdout.y.long(), plan.holdout),
        )

