"""Submission-time validation (docs/api.md ``POST /v1/jobs``, 422): every reason a job could not
run that is knowable from stored metadata — the rows and catalogue summaries — without loading
an array or a checkpoint, so a submission stays cheap."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from gif.builtins import is_builtin
from gif.errors import InvalidRequest
from gif.fit import ModelIO, check_fits
from gif.request import (
    INFLUENCE_METHODS,
    RESERVED_SET_NAMES,
    Relabel,
    RemoveClass,
    RemoveSamples,
    check_solver,
)
from service.catalog import BuiltinCatalog, DatasetSummary
from service.db.models import SUMMARY_SET, Dataset, Model
from service.db.owned import find_owned_columns, owned_columns
from service.problems import ProblemError, validation_problem
from service.schemas import JobCreate

# Names the edit's own metrics use; an eval set may not shadow them (checked at submission).
RESERVED_EVAL_NAMES = (*RESERVED_SET_NAMES, SUMMARY_SET)


Loc = tuple[str | int, ...]

# The columns validation reads (no ORM objects), and their statements, built once (prebuilt
# statements skip SQLAlchemy's per-call construction and cache-key work).
MODEL_COLUMNS = (Model.arch, Model.input, Model.input_shape, Model.flat_input, Model.num_outputs)
DATASET_COLUMNS = (Dataset.num_samples, Dataset.sample_shape, Dataset.dtype, Dataset.num_classes,
                   Dataset.class_counts)
_MODEL_COLUMNS = owned_columns(Model, *MODEL_COLUMNS)
_DATASET_COLUMNS = owned_columns(Dataset, *DATASET_COLUMNS)
_UNREAD: Any = object()


@dataclass(frozen=True)
class Prefetched:
    """The model's and the train set's validation columns (rows with the attributes of
    :data:`MODEL_COLUMNS` and :data:`DATASET_COLUMNS`) that the caller read with its own query
    (a submission reads them with its other reads, in one); None where no such owned row is."""

    model: Any
    train: Any


@dataclass(frozen=True)
class ResolvedDataset:
    id: str
    summary: DatasetSummary


def _resolve_dataset(
    session: Session | sa.Connection, catalog: BuiltinCatalog, owner_id: str, dataset_id: str,
    loc: Loc,
    row: Any = _UNREAD,
) -> ResolvedDataset:
    if is_builtin(dataset_id):
        summary = catalog.get(dataset_id)
    else:
        if row is _UNREAD:
            row = find_owned_columns(session, _DATASET_COLUMNS, owner_id, dataset_id)
        summary = (
            DatasetSummary(
                num_samples=row.num_samples,
                sample_shape=list(row.sample_shape),
                dtype=row.dtype,
                num_classes=row.num_classes,
                class_counts=list(row.class_counts),
            )
            if row is not None
            else None
        )
    if summary is None:
        raise _invalid(loc, f"unknown dataset {dataset_id!r}")
    return ResolvedDataset(dataset_id, summary)


def _invalid(loc: Loc, msg: str) -> ProblemError:
    return validation_problem(msg, [(("body", *loc), msg)])


def _stored_io(model: Any) -> ModelIO | None:
    """The model's :class:`~gif.fit.ModelIO` as stored at upload (None: not known)."""
    if model.flat_input is None:
        return None
    shape = tuple(model.input_shape) if model.input_shape is not None else None
    return ModelIO(model.arch, shape, model.flat_input, model.num_outputs)


def _check_fits(io: ModelIO | None, model: Any, dataset: ResolvedDataset, loc: Loc) -> None:
    """The engine's own fit rules (``gif.fit``: shape, channels, labels vs outputs), on what
    was stored at upload — no forward pass, no torch."""
    if io is None:
        return  # nothing stored for this architecture: the worker checks at load
    mean = (model.input or {}).get("mean")
    summary = dataset.summary
    try:
        check_fits(io, mean, summary.sample_shape, summary.num_classes, dataset.id, loc)
    except InvalidRequest as err:
        raise _invalid(loc, err.message) from None


def validate_job(
    session: Session | sa.Connection, catalog: BuiltinCatalog, owner_id: str, body: JobCreate,
    prefetched: Prefetched | None = None,
) -> None:
    """Every reason the job could not run that is knowable now → 422 naming the field.

    Uses only metadata (rows and catalogue summaries), so submission stays cheap: no forward
    pass, no torch. ``prefetched``: the model's and train set's rows, already read."""
    _check_solver(body)
    model = (prefetched.model if prefetched is not None
             else find_owned_columns(session, _MODEL_COLUMNS, owner_id, body.model_id))
    if model is None:
        raise _invalid(("model_id",), f"unknown model {body.model_id!r}")
    io = _stored_io(model)
    train = _resolve_dataset(
        session, catalog, owner_id, body.train_dataset_id, ("train_dataset_id",),
        prefetched.train if prefetched is not None else _UNREAD,
    )
    evals = {}
    for name, dataset_id in body.eval.datasets.items():
        loc: Loc = ("eval", "datasets", name)
        if name in RESERVED_EVAL_NAMES:
            raise _invalid(loc, f"eval set name {name!r} is reserved")
        evals[name] = _resolve_dataset(session, catalog, owner_id, dataset_id, loc)

    _check_fits(io, model, train, ("train_dataset_id",))
    for name, dataset in evals.items():
        _check_fits(io, model, dataset, ("eval", "datasets", name))
    if body.step.holdout_dataset_id is not None:  # method.md E9's non-members, tuning only
        holdout_loc: Loc = ("step", "holdout_dataset_id")
        holdout = _resolve_dataset(session, catalog, owner_id, body.step.holdout_dataset_id,
                                   holdout_loc)
        _check_fits(io, model, holdout, holdout_loc)
    _validate_edit(body, train.summary, io.num_outputs if io is not None else None)


def _check_solver(body: JobCreate) -> None:
    """A solver that cannot solve the method's system (MINRES on GIF's rectangular operator, a
    damped MINRES) is a 422 now, not a failed job later; training methods ignore ``solver``."""
    if body.method not in INFLUENCE_METHODS:
        return
    try:
        check_solver(body.method, body.solver)
    except InvalidRequest as err:
        raise _invalid(err.loc, err.message) from None


def _validate_edit(body: JobCreate, train: DatasetSummary, num_classes: int | None) -> None:
    edit = body.edit
    n = train.num_samples
    if isinstance(edit, RemoveClass):
        label_range = num_classes if num_classes is not None else train.num_classes
        if edit.class_ >= label_range:
            raise _invalid(
                ("edit", "class"),
                f"class {edit.class_} is outside the label range 0..{label_range - 1}",
            )
        count = train.class_counts[edit.class_] if edit.class_ < len(train.class_counts) else 0
        if count == 0:
            raise _invalid(("edit", "class"), f"class {edit.class_} has no training point")
        if count == n:
            raise _invalid(("edit", "class"), "removing this class would remove every point")
        return
    assert isinstance(edit, RemoveSamples | Relabel)
    for i, index in enumerate(edit.indices):
        if index >= n:
            raise _invalid(
                ("edit", "indices", i), f"index {index} is out of range (the dataset has {n})"
            )
    if len(edit.indices) >= n:
        raise _invalid(("edit", "indices"), "the edit would touch every training point")
    if isinstance(edit, Relabel):
        label_range = num_classes if num_classes is not None else train.num_classes
        for i, label in enumerate(edit.labels):
            if label >= label_range:
                raise _invalid(
                    ("edit", "labels", i),
                    f"label {label} is outside the label range 0..{label_range - 1}",
                )
