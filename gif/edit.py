"""THE edit function: the CLI, the worker and the experiments all call ``run_edit``.

One call edits one model: validate the request against the data, sample the edited points
``U`` and the Hessian data (MATH.md E1), select the parameters that move (paper §4), build the
right-hand side (E1), solve for ``Δ_S`` (E2–E8), choose the step ``α`` on a validation split
held out of the training data (E9), and measure everything before and after. The input state
dict is never mutated; the output is a fresh full state dict with the same keys and dtypes.

Data bookkeeping (all seeded by ``request.seed``; indices into the train dataset ``D``):

- ``E``: every edited point (the class, or the request's indices); ``m = |E|``, ``N = |D|``.
- ``U ⊂ E``: ``solver.edit_samples`` of them, the points whose gradients form ``b`` (E1).
- ``D \\ E`` is shuffled and cut into the *validation split* (``step.validation_fraction``,
  used only by the step search) and the *pool*; the Hessian sample (``solver.hessian_samples``)
  comes from the pool (removal: ``H`` of the retained data) or from the pool plus ``E`` with
  the corrected labels (relabel: ``H`` of the corrected data). So ``α`` is never tuned on
  points the Hessian saw, nor on any evaluation set.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import torch
from torch import nn

from gif import metrics as M
from gif.errors import Cancelled, GifError, InvalidRequest, NonFinite
from gif.request import EditRequest, Relabel, RemoveClass
from gif.spec import ModelSpec
from gif.step import ScaleCurve, fixed_scale, search_scale

PHASES = ("load", "select", "solve", "step_search", "evaluate", "save")
REMOVAL_KINDS = ("remove_class", "remove_samples")
# Keys of ``metrics.before/after`` that the edit fills itself; eval sets may not take them.
RESERVED_SET_NAMES = ("forget", "relabeled", "retain", "score", "retained_grad_norm", "mia")
MIN_UNEDITED = 2  # one point for the step's validation split, one for the Hessian sample


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class LoadedModel:
    """A model as the engine receives it: its spec and its (CPU) state dict."""

    spec: ModelSpec
    state_dict: Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Progress:
    """Where the edit is: the phase, and inside ``solve`` the solver's iteration and residual."""

    phase: str
    iteration: int | None = None
    max_iter: int | None = None
    residual: float | None = None


@dataclass(frozen=True)
class EditHooks:
    """Callbacks of the caller; each optional.

    ``progress(Progress)``; ``event(level, phase, message, data)`` for the job's event log;
    ``should_cancel() -> bool``, polled between phases and solver iterations (→ ``Cancelled``).
    """

    progress: Callable[[Progress], None] | None = None
    event: Callable[[str, str, str, dict], None] | None = None
    should_cancel: Callable[[], bool] | None = None


@dataclass(frozen=True)
class EditOutcome:
    """The edited full state dict (CPU) and the JSON-able result (API.md job ``result``)."""

    state_dict: dict[str, torch.Tensor]
    result: dict[str, Any]


# --------------------------------------------------------------------------- the edit


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
    from gif.checkpoint import load_state_dict_strict
    from gif.params import ParamSpace, apply_update
    from gif.registry import build_model, get_architecture

    reporter = _Reporter(hooks or EditHooks())
    with reporter.phase("load"):
        device = resolve_device(request.device)
        _check_finite_state(model.state_dict, "the input weights")
        arch = get_architecture(model.spec.arch)
        original = build_model(model.spec)
        own_copy = {k: v.detach().clone() for k, v in model.state_dict.items()}
        load_state_dict_strict(original, own_copy)
        original = original.to(device).eval()
        space = ParamSpace.from_model(original)
        num_classes = _num_classes(model.spec, original, train, arch.flat_input)
        validate_request(request, model.spec, train, eval_sets, num_classes)
        plan = plan_indices(request, train)
        data = _EditData.build(request, model.spec, arch.flat_input, train, eval_sets, plan)
        reporter.event("info", "load", "model and data ready", {
            "device": str(device), "num_parameters": space.size, "num_classes": num_classes,
            "edited_points": len(plan.edited), "edit_sample": len(plan.edit_sample),
            "hessian_sample": len(plan.hessian), "validation_split": len(plan.validation),
        })

    with reporter.phase("select"):
        indices, selection_info = _select(request, original, space, data)
        reporter.event("info", "select", f"{len(indices):,} of {space.size:,} parameters move",
                       {"num_selected": len(indices), "criterion": request.selection.criterion})

    with reporter.phase("solve"):
        solution, b_norm = _solve(request, original, space, indices, data, plan, reporter)
        solver_info = {"algorithm": request.solver.algorithm, **solution.result.to_dict(),
                       "rhs_norm": b_norm}
        level = "info" if solution.result.converged else "warning"
        reporter.event(level, "solve", f"solver stopped: {solution.result.stop_reason}",
                       _solver_summary(solver_info))

    with reporter.phase("step_search"):
        edited = _copy_model(original)
        theta_hat = space.flatten(dict(original.named_parameters())).detach()
        update = _full_update(solution.indices, solution.delta, space.size, theta_hat)

        def apply(alpha: float) -> nn.Module:
            _load_flat(edited, space, theta_hat + alpha * update)
            return edited

        objective = _step_objective(request.edit.kind, data, num_classes)
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
        _check_finite_state(edited_state, "the edited weights (nothing is returned)")
        measure = _Measurer(request, data, num_classes)
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
    return EditOutcome(state_dict=edited_state, result=_json_clean(result))


# --------------------------------------------------------------------------- validation


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


def _num_classes(spec: ModelSpec, model: nn.Module, train, flat_input: bool) -> int:
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


# --------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class IndexPlan:
    """Seeded index sets of one edit (see the module docstring)."""

    edited: np.ndarray  # E
    edit_sample: np.ndarray  # U ⊂ E
    new_labels: np.ndarray | None  # relabel: corrected label of each point of E
    validation: np.ndarray  # step-search split of D \ E
    hessian: np.ndarray  # points of H's sample (may include E for relabel)
    retain: np.ndarray  # the `retain` metrics sample of D \ E
    num_train: int


def plan_indices(request: EditRequest, train) -> IndexPlan:
    """Draw ``E``, ``U``, the validation split, the Hessian and the retain sample (E1, E9)."""
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
    n_validation = min(max(1, round(request.step.validation_fraction * len(rest))), len(rest) - 1)
    validation = np.sort(shuffled[:n_validation])
    pool = shuffled[n_validation:]
    hessian_source = pool if edit.kind in REMOVAL_KINDS else np.concatenate([pool, edited])
    hessian = _sample(rng, hessian_source, request.solver.hessian_samples)
    retain = _sample(rng, rest, request.eval.retain_samples)
    return IndexPlan(edited, edit_sample, new_labels, validation, hessian, retain, n)


def _sample(rng: np.random.Generator, population: np.ndarray, size: int | None) -> np.ndarray:
    """A sorted seeded sample without replacement; the whole population when it is small enough."""
    if size is None or size >= len(population):
        return np.sort(population)
    return np.sort(rng.choice(population, size=size, replace=False))


@dataclass
class _EditData:
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

    @classmethod
    def build(cls, request: EditRequest, spec: ModelSpec, flat: bool, train,
              eval_sets: Mapping, plan: IndexPlan) -> _EditData:
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
        )


# --------------------------------------------------------------------------- phases


def _select(request: EditRequest, model: nn.Module, space, data: _EditData):
    """Paper §4 selection on the edit sample ``U`` → flat indices of ``S`` and a summary.

    IF (E2) moves every parameter, so it skips selection.
    """
    if request.method == "if":
        indices = torch.arange(space.size)
        return indices, {"criterion": None, "ratio": 1.0, "num_selected": space.size}
    from gif.selection import select_parameters

    targets = data.u_new_y if data.u_new_y is not None else data.u_y
    selection = select_parameters(
        model, data.u_x, targets, criterion=request.selection.criterion,
        ratio=request.selection.ratio, threshold=request.selection.threshold,
        seed=request.seed, batch_size=request.solver.batch_size,
    )
    indices = space.indices(selection.masks)
    if len(indices) == 0:
        raise InvalidRequest(f"the selection ratio {request.selection.ratio} selects no parameter "
                             f"in any layer; raise selection.ratio", loc=("selection", "ratio"))
    info = {"criterion": request.selection.criterion, "ratio": request.selection.ratio,
            "num_selected": int(len(indices)), "num_eligible": selection.num_eligible,
            "_per_layer": selection.per_layer}
    return indices, info


def _solve(request: EditRequest, model: nn.Module, space, indices: torch.Tensor,
           data: _EditData, plan: IndexPlan, reporter: _Reporter):
    """E1 right-hand side on ``U`` and the E2–E5 solve with ``H`` of the Hessian sample."""
    from gif.hvp import make_hvp, mean_loss_grad
    from gif.methods import relabel_rhs, removal_rhs, solve_edit

    batch_size = request.solver.batch_size
    m, n = len(plan.edited), plan.num_train
    grad_old = mean_loss_grad(model, data.u_x, data.u_y, batch_size=batch_size)
    if data.u_new_y is None:
        b = removal_rhs(grad_old, m, n)
    else:
        grad_new = mean_loss_grad(model, data.u_x, data.u_new_y, batch_size=batch_size)
        b = relabel_rhs(grad_new, grad_old, m, n)
    b_norm = float(torch.linalg.vector_norm(b))
    if b_norm == 0.0:
        raise NonFinite("the edit's right-hand side is exactly zero: the edited points carry "
                        "no gradient, so there is nothing to solve")
    hvp = make_hvp(model, data.h_x, data.h_y, batch_size=batch_size)
    max_iter = request.solver.max_iter

    def on_iteration(info: dict) -> None:
        reporter.progress(Progress("solve", int(info.get("iteration", 0)),
                                   int(info.get("max_iter", max_iter)), info.get("residual")))

    solution = solve_edit(request.method, hvp, b, indices.to(b.device),
                          solver_cfg=request.solver, callback=on_iteration,
                          should_stop=reporter.should_stop)
    if not bool(torch.isfinite(solution.delta).all()):
        raise NonFinite("the solver returned a non-finite update")
    return solution, b_norm


def _step_objective(kind: str, data: _EditData, num_classes: int):
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


class _Measurer:
    """Metrics of one model on every named set (API.md, Metrics), plus score, MIA, ‖∇R‖."""

    def __init__(self, request: EditRequest, data: _EditData, num_classes: int):
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


# --------------------------------------------------------------------------- helpers


def per_layer_changes(space, indices: torch.Tensor, update: torch.Tensor,
                      selection_per_layer: list[dict] | None = None) -> list[dict]:
    """Share of parameters changed and ``‖αΔ‖₂`` per layer (module), in parameter order.

    Layers are the modules owning the parameters (``conv1.weight`` → ``conv1``), so normalisation
    layers appear with 0 changed. Extra fields of the selection's own per-layer summary
    (``type``, ``units``, ``units_selected``, threshold) are merged in by layer name.
    """
    full = torch.zeros(space.size, dtype=torch.float64)
    full[indices] = update.double()
    chosen = torch.zeros(space.size, dtype=torch.bool)
    chosen[indices] = True
    layers: dict[str, dict] = {}
    for name in space.names:
        # A model that is itself one layer (``linear``) owns ``weight``/``bias`` at the root:
        # its layer name is "", as in the selection's per-layer summary.
        layer = name.rsplit(".", 1)[0] if "." in name else ""
        span = space.slice_of(name)
        entry = layers.setdefault(layer, {"name": layer, "num_parameters": 0, "num_selected": 0,
                                          "_square": 0.0})
        entry["num_parameters"] += span.stop - span.start
        entry["num_selected"] += int(chosen[span].sum())
        entry["_square"] += float(full[span].pow(2).sum())
    extra = {}
    for item in selection_per_layer or []:
        key = item.get("layer", item.get("name"))
        extra[key] = {k: v for k, v in item.items()
                      if k in ("type", "units", "units_selected", "threshold", "threshold_lowered")}
    rows = []
    for layer, entry in layers.items():
        square = entry.pop("_square")
        rows.append({**entry, "ratio": entry["num_selected"] / entry["num_parameters"],
                     "update_norm": math.sqrt(square), **extra.get(layer, {})})
    return rows


def _full_update(indices: torch.Tensor, delta: torch.Tensor, size: int,
                 like: torch.Tensor) -> torch.Tensor:
    """``pad_S(Δ_S)`` (E6) on the parameters' device and dtype."""
    full = torch.zeros(size, dtype=like.dtype, device=like.device)
    full[indices.to(like.device)] = delta.to(device=like.device, dtype=like.dtype)
    return full


@torch.no_grad()
def _load_flat(model: nn.Module, space, theta: torch.Tensor) -> None:
    """Write the flat ``θ`` into the model's parameters in place (the working copy only)."""
    params = dict(model.named_parameters())
    for name, value in space.unflatten(theta).items():
        params[name].copy_(value)


def _copy_model(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).eval()


def _check_finite_state(state: Mapping[str, torch.Tensor], what: str) -> None:
    bad = [k for k, v in state.items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFinite(f"{what} contain NaN or Inf in {bad[:5]}", details={"tensors": bad})


def _solver_summary(info: dict) -> dict:
    return {k: info.get(k) for k in ("algorithm", "iterations", "hvps", "residual",
                                     "normal_residual", "seconds", "converged", "stop_reason")}


def _json_clean(value: Any) -> Any:
    """Plain JSON types only: NaN/Inf become None (JSON has no NaN), tuples lists."""
    if isinstance(value, dict):
        return {str(k): _json_clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_clean(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, torch.Tensor):
        return _json_clean(value.tolist())
    return value


class _Reporter:
    """Phase timings, progress, events and cancellation, all through the caller's hooks."""

    def __init__(self, hooks: EditHooks):
        self.hooks = hooks
        self.timings: dict[str, float] = {}

    def should_stop(self) -> bool:
        return bool(self.hooks.should_cancel and self.hooks.should_cancel())

    def check_cancel(self) -> None:
        if self.should_stop():
            raise Cancelled("the edit was cancelled")

    def progress(self, progress: Progress) -> None:
        if self.hooks.progress:
            self.hooks.progress(progress)

    def event(self, level: str, phase: str, message: str, data: dict | None = None) -> None:
        if self.hooks.event:
            self.hooks.event(level, phase, message, _json_clean(data or {}))

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.check_cancel()
        self.progress(Progress(name))
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - started, 4)
        self.check_cancel()


# --------------------------------------------------------------------------- from files


def _parse_json(value: str | Path | Mapping, what: str) -> Any:
    """A dict as is, a JSON string, or the path of a JSON file."""
    if isinstance(value, Mapping):
        return dict(value)
    text = str(value)
    if not text.lstrip().startswith("{"):
        path = Path(text)
        try:
            text = path.read_text()
        except OSError as err:
            raise InvalidRequest(f"cannot read the {what} file {path}: {err.strerror}",
                                 loc=(what,)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidRequest(f"the {what} is not valid JSON: {err}", loc=(what,)) from None


def _validated(model_cls: type[pydantic.BaseModel], payload: Any, what: str):
    try:
        return model_cls.model_validate(payload)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        loc = (what, *first["loc"])
        where = ".".join(str(p) for p in first["loc"]) or what
        raise InvalidRequest(f"invalid {what}: {where}: {first['msg']}", loc=loc,
                             details={"errors": err.errors(include_url=False,
                                                           include_context=False)}) from None


def edit_from_files(
    request_json: str | Path | Mapping,
    model_path: str | Path,
    spec_json: str | Path | Mapping,
    train_id_or_path: str,
    evals: Mapping[str, str] | None = None,
    hooks: EditHooks | None = None,
) -> EditOutcome:
    """``run_edit`` on files: the request and spec (dicts, JSON text or JSON files), a checkpoint
    read safely (``gif.checkpoint.read_state_dict``), datasets by path or built-in id. The
    request's ``eval.datasets`` are loaded first, then ``evals`` (which win on equal names)."""
    from gif.checkpoint import read_state_dict
    from gif.data import load_dataset

    request = _validated(EditRequest, _parse_json(request_json, "request"), "request")
    spec = _validated(ModelSpec, _parse_json(spec_json, "spec"), "spec")
    state_dict = read_state_dict(model_path)
    train = load_dataset(train_id_or_path)
    sources = {**request.eval.datasets, **(evals or {})}
    eval_sets = {name: load_dataset(source) for name, source in sources.items()}
    return run_edit(request, LoadedModel(spec, state_dict), train, eval_sets, hooks)


__all__ = [
    "PHASES", "EditHooks", "EditOutcome", "GifError", "LoadedModel", "Progress", "ScaleCurve",
    "edit_from_files", "per_layer_changes", "plan_indices", "resolve_device", "run_edit",
    "validate_request",
]
