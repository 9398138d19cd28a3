"""The edit request: the JSON body of ``POST /v1/jobs`` (api.md) without ``model_id`` and
``train_dataset_id``. Defined once here, used by the CLI (``gif edit --request``), by the
service (which adds the two ids) and by the worker. Unknown fields are rejected so a typo
(``"mehtod"``) is an error naming the field, not a silently ignored option."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from gif.errors import InvalidRequest
from gif.spec import refuse_field_flood, refuse_long

# Phases of an edit job, in order (api.md ``progress.phase``). GIF goes through ``select``,
# ``solve`` and ``step_search``; the training methods of method.md E10 through ``train`` (and
# ``select`` for salun's saliency mask) instead: each job reports only the phases it runs.
PHASES = ("load", "select", "train", "solve", "step_search", "evaluate", "save")
REMOVAL_KINDS = ("remove_class", "remove_samples")
EDIT_KINDS = (*REMOVAL_KINDS, "relabel")
# Keys of ``metrics.before/after`` that the edit fills itself; eval sets may not take them.
RESERVED_SET_NAMES = ("forget", "relabeled", "retain", "score", "retained_grad_norm", "mia")

# Caps of the request (api.md Limits: every list and map has one; numbers are finite and
# every integer bounded, so nothing overflows further down).
MAX_LABEL = 1_000_000  # the largest class label (datasets and edits)
MAX_POINTS = 2**32 - 1  # the largest index into, or count of points of, a dataset
MAX_EDIT_POINTS = 1_000_000  # entries of edit.indices / edit.labels
MAX_EVAL_DATASETS = 16  # entries of eval.datasets
MAX_SET_NAME_LENGTH = 64
MAX_DATASET_ID_LENGTH = 200

Index = Annotated[int, Field(ge=0, le=MAX_POINTS)]
Label = Annotated[int, Field(ge=0, le=MAX_LABEL)]


class _Strict(BaseModel):
    # allow_inf_nan=False: NaN, Infinity and 1e999 are a 422, never stored (api.md). Lists are
    # validated fail_fast and unknown-field floods refused at once: errors stay few, however
    # many bad entries a body holds (gif.spec).
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _few_unknown(cls, data: Any) -> Any:
        return refuse_field_flood(cls, data)


class RemoveClass(_Strict):
    """Forget every training point of one class."""

    kind: Literal["remove_class"]
    class_: int = Field(alias="class", ge=0, le=MAX_LABEL, description="The label to forget.")


class RemoveSamples(_Strict):
    """Forget the listed training points (indices into the train dataset)."""

    kind: Literal["remove_samples"]
    indices: list[Index] = Field(min_length=1, max_length=MAX_EDIT_POINTS, fail_fast=True)

    @model_validator(mode="after")
    def _unique(self) -> RemoveSamples:
        if len(set(self.indices)) != len(self.indices):
            raise ValueError("indices must be unique")
        return self


class Relabel(_Strict):
    """Change the labels of the listed points to ``labels`` (e.g. undo a backdoor)."""

    kind: Literal["relabel"]
    indices: list[Index] = Field(min_length=1, max_length=MAX_EDIT_POINTS, fail_fast=True)
    labels: list[Label] = Field(min_length=1, max_length=MAX_EDIT_POINTS, fail_fast=True)

    @model_validator(mode="after")
    def _same_length(self) -> Relabel:
        if len(self.indices) != len(self.labels):
            raise ValueError(
                f"indices and labels must have the same length "
                f"({len(self.indices)} != {len(self.labels)})"
            )
        if len(set(self.indices)) != len(self.indices):
            raise ValueError("indices must be unique")
        return self


Edit = Annotated[RemoveClass | RemoveSamples | Relabel, Field(discriminator="kind")]


class Selection(_Strict):
    """Which parameters move (method.md, Parameter selection)."""

    criterion: Literal["topk_outputs", "topk_gradients", "threshold", "random"] = Field(
        "topk_gradients",
        description="How units are ranked (method.md, Parameter selection). Default "
                    "topk_gradients, the paper notebooks' criterion (docs/defaults.md).")
    ratio: float = Field(
        0.1, gt=0.0, le=1.0, description="Modification ratio per layer, in (0, 1]."
    )
    threshold: float | None = Field(
        None, ge=0.0, description="Output-score threshold τ; required for criterion=threshold."
    )

    @model_validator(mode="after")
    def _threshold_given(self) -> Selection:
        if self.criterion == "threshold" and self.threshold is None:
            raise ValueError("criterion 'threshold' needs a 'threshold' value")
        return self


SYMMETRIC_ALGORITHMS = frozenset({"minres"})
"""Solvers that need ``A = Aᵀ`` (the IF/PIF/FIF systems, not GIF's rectangular H[:,S])."""
SCALINGS = frozenset({"columns", "layers"})
"""The column scalings of E8 (``auto`` is none, or a choice the edit makes between none and
``columns`` on the validation split; ``gif.edit.run``)."""
AUTO_SCALING_ITERATION = 16
"""``preconditioner: auto``: the iteration by which an unscaled path that has not stopped (its
validation score still climbing, E9) hands over to the column-scaled solve at the latest.
Every unscaled path on the benchmark's relabel and sample removals, and on the class removals
below 60k points, stopped by itself by iteration 16; on the full-data class removal it ran to
32-50 iterations and lost 0.4-2.9 points that the scaled solve keeps (docs/defaults.md)."""
AUTO_SCALING_EARLIEST = 8
"""``preconditioner: auto``: from this iteration on, an unscaled path hands over at the first
scored iterate whose score rose (by more than E9's ``min_gain``: a new reference), before
``AUTO_SCALING_ITERATION``. A path that stops by itself by iteration 16 never does on this
rule (only the far-α rule, ``AUTO_SCALING_FAR_SCALE``, hands over sooner): E9 stops it at
``k ≥ 2·k_ref + patience`` (patience 4), so its last rise was by iteration 6. A path
still rising after 7 is one E9 would keep solving past 16 anyway, and the earlier hand-over
spends fewer iterations on the attempt the validation split then discards (docs/defaults.md,
"Where `auto`'s cost goes")."""
AUTO_SCALING_FAR_SCALE = 512.0
"""``preconditioner: auto``: a scored iterate from ``AUTO_SCALING_FAR_FROM`` (per method) on
whose best α is at least this hands over at once. α that large (eight times the grid's
largest, 64) means the update of the unscaled geometry is hundreds of times too short: the
edited points' gradients are nearly saturated and the first Krylov directions are the
high-curvature ones that barely move the objective. Measured where the rule starts: 2,048 at
GIF's first iterate and 4,096 at its third on the full-data TinyNet class removal (whose scaled
solve wins), at most 64 (GIF, FIF, first iterate) and 128 (PIF, third) on every other benchmark
edit measured (docs/defaults.md, "An earlier hand-over for a slow path")."""
AUTO_SCALING_FAR_FROM: dict[str, int] = {"gif": 1, "fif": 1, "pif": 3, "if": 3}
"""Where the far-α rule starts, per method. GIF's and FIF's first iterate already shows an
update far too short: at k = 1 the full-data TinyNet class removal's best α was 2,048 (32,768
on an earlier machine's original), every other benchmark edit's 64 or less
(docs/defaults.md, "An earlier hand-over for a slow path" and "The hand-over at the first
iterate"), so waiting for k = 3 only bought two more unscaled iterates the validation split then
discarded. PIF's early iterates, the full IF's first Krylov steps cut to ``S``, are short on
their own (best α 2,048 then 512 on the small class removal, 4,096 then 128 on the medium one,
then 64 and 128 at the third: paths that stop by themselves and are right unscaled), so PIF waits
for the third; so does IF, whose early iterates were not measured. Two octaves below the
threshold at the rule's first iterate on every benchmark edit but the full-data class removal,
two above it there."""


class Solver(_Strict):
    """The inverse-HVP solve (method.md E7, E8)."""

    algorithm: Literal["lsqr", "neumann", "cg", "minres"] = Field(
        "lsqr",
        description="lsqr (E8, any method); cg (CG on the normal equations); neumann (the "
                    "paper's series, E7); minres (E8: one HVP per iteration, for the symmetric "
                    "systems of fif, pif and if only, undamped).",
    )
    max_iter: int = Field(
        50, ge=1, le=10_000,
        description="A cap: with step.mode=auto the regularisation path (method.md E9) stops the "
                    "solve earlier, once the validation score stops improving "
                    "(docs/defaults.md).")
    tol: float = Field(
        1e-4, gt=0.0, lt=1.0,
        description="Stop when the relative residual or normal-equation residual is <= tol.",
    )
    damping: float = Field(
        0.0, ge=0.0, le=1e6,
        description="Tikhonov damping relative to the operator's scale (method.md E8): the solve "
                    "minimises ||A d - r||^2 + lambda^2 ||d||^2 with lambda = damping * "
                    "||A^T r|| / ||r|| (A = H[:,S] for gif), which scales with the loss, so a "
                    "damped GIF stays invariant to scaling the loss (E3). The lambda used is "
                    "reported as result.solver.damp.",
    )
    conlim: float = Field(
        1e8, ge=0.0,
        description="Stop (stop_reason condition_limit) when the solver's estimate of the "
                    "condition number passes this (lsqr, minres; scipy's default). 0: no limit.",
    )
    stagnation_window: int = Field(
        5, ge=0, le=1000,
        description="Stop (stop_reason stagnation) when neither residual has fallen by more "
                    "than the working precision allows (float32 about 1e-6 relative) over this "
                    "many iterations. 0: never (run to tol or max_iter).",
    )
    hessian_samples: int | None = Field(
        512, ge=1, le=MAX_POINTS, description="Retained points in H; null: all."
    )
    edit_samples: int | None = Field(
        512, ge=1, le=MAX_POINTS, description="Edited points in b; null: all."
    )
    batch_size: int = Field(256, ge=1, le=65_536, description="Micro-batch size of each HVP.")
    preconditioner: Literal["auto", "none", "columns", "layers"] = Field(
        "auto",
        description="auto: unscaled, but a path still improving stops (at the first "
                    "iterate from AUTO_SCALING_FAR_FROM ("
                    + ", ".join(f"{m} {k}" for m, k in AUTO_SCALING_FAR_FROM.items())
                    + ") on whose "
                    f"best step is AUTO_SCALING_FAR_SCALE ({AUTO_SCALING_FAR_SCALE:g}) or "
                    f"more, or from AUTO_SCALING_EARLIEST ({AUTO_SCALING_EARLIEST}) on whose "
                    f"score rose, at AUTO_SCALING_ITERATION ({AUTO_SCALING_ITERATION}) at the "
                    "latest) and the column-scaled problem "
                    "is solved too, the validation split keeping the better edit (step.mode "
                    "auto with lsqr, cg or neumann; otherwise none). none: unscaled. columns: "
                    "solve with the columns of the operator scaled to unit norm (Jacobi "
                    "scaling of the normal equations, norms estimated from "
                    "preconditioner_probes HVPs; method.md E8); layers: one scale per "
                    "parameter tensor, its columns' root-mean-square norm. columns and layers: "
                    "lsqr, cg and neumann only.",
    )
    preconditioner_probes: int = Field(
        8, ge=1, le=256,
        description="Random ±1 probes (one HVP each) that estimate the column norms for "
                    "preconditioner=columns or layers (and auto's scaled solve).",
    )




def check_solver(method: str, solver_cfg: Solver) -> None:
    """``InvalidRequest`` (naming the field) when ``solver_cfg`` cannot solve ``method``'s system.

    MINRES needs a symmetric operator: FIF's ``H[S,S]`` or IF/PIF's ``H``, not GIF's rectangular
    ``H[:,S]``; and it solves the undamped system (a damped solve is LSQR's). Pure (no torch): the
    API runs it at submission (a 422), the engine again before any gradient work.
    """
    if solver_cfg.algorithm not in SYMMETRIC_ALGORITHMS:
        return
    if solver_cfg.preconditioner in SCALINGS:
        raise InvalidRequest(
            f"solver.algorithm {solver_cfg.algorithm!r} needs a symmetric system, and a column "
            f"scaling makes it unsymmetric: set solver.preconditioner to none, or use lsqr",
            loc=("solver", "preconditioner"),
        )
    if method == "gif":
        raise InvalidRequest(
            f"solver.algorithm {solver_cfg.algorithm!r} needs a symmetric system, and GIF's "
            f"operator H[:,S] is rectangular (method.md E3, E6): use lsqr (or cg, neumann) for "
            f"gif, or {solver_cfg.algorithm} with method fif, pif or if",
            loc=("solver", "algorithm"),
        )
    if solver_cfg.damping > 0:
        raise InvalidRequest(
            f"solver.algorithm {solver_cfg.algorithm!r} solves the undamped system: set "
            f"solver.damping to 0, or use lsqr for a damped solve",
            loc=("solver", "damping"),
        )


class Step(_Strict):
    """The step α of method.md E9."""

    mode: Literal["auto", "fixed"] = Field(
        "auto",
        description="auto: the regularisation path chooses the solver iterate and α together "
                    "on the validation split (method.md E9); fixed: the full solve, stepped by "
                    "scale, with no validation split held out.")
    scale: float = Field(1.0, gt=0.0, le=1e6, description="α for mode=fixed.")
    validation_fraction: float = Field(
        0.1, gt=0.0, le=0.5,
        description="Share of the unedited training points held out to score the path, at "
                    "most 1,024 points (mode=auto only).")
    holdout_dataset_id: str | None = Field(
        None, min_length=1, max_length=MAX_DATASET_ID_LENGTH,
        description="Data the model never trained on (non-members), used only to tune a sample "
                    "removal (method.md E9); never reported as an evaluation set. Without it the "
                    "sample-removal objective falls back to the retained validation split.",
    )


class Eval(_Strict):
    datasets: dict[
        Annotated[str, Field(min_length=1, max_length=MAX_SET_NAME_LENGTH)],
        Annotated[str, Field(min_length=1, max_length=MAX_DATASET_ID_LENGTH)],
    ] = Field(
        default_factory=dict,
        max_length=MAX_EVAL_DATASETS,
        description=f"Name → dataset id of evaluation sets (never used to tune); at most "
        f"{MAX_EVAL_DATASETS}.",
    )
    mia: bool = False
    retain_samples: int = Field(
        2048, ge=1, le=MAX_POINTS, description="Size of the retained-data sample evaluated."
    )

    @field_validator("datasets", mode="before")
    @classmethod
    def _few_datasets(cls, value: Any) -> Any:
        return refuse_long(value, MAX_EVAL_DATASETS, "eval.datasets")


class Outputs(_Strict):
    """What the job stores besides the edited model (api.md ``outputs``)."""

    retained_dataset: bool = Field(
        False,
        description="Removal edits: also store the train dataset without the forgotten points "
                    "as a new dataset (result.retained_dataset_id), so the original can be "
                    "erased.")


# The edit methods: the influence-function family (method.md E2–E5) and the training methods of
# E10, the alternatives users would pick instead, run under the same request and metrics.
INFLUENCE_METHODS = ("gif", "fif", "pif", "if")
TRAINING_METHODS = ("finetune", "gradient_ascent", "random_labels", "salun", "l1_sparse", "retrain")
Method = Literal[INFLUENCE_METHODS + TRAINING_METHODS]  # one list of names, here
# E10: class and sample removal apply to every training method; relabel only to those that can
# train on the corrected labels (finetune, the random-labels recipe with the corrected labels in
# place of random ones, and retraining on the corrected data).
TRAINING_METHOD_KINDS: dict[str, tuple[str, ...]] = {
    "finetune": EDIT_KINDS,
    "gradient_ascent": REMOVAL_KINDS,
    "random_labels": EDIT_KINDS,
    "salun": REMOVAL_KINDS,
    "l1_sparse": REMOVAL_KINDS,
    "retrain": EDIT_KINDS,
}

# The published recipes the unset training fields take (E10). Source: the SalUn repository
# (OPTML-Group/Unlearn-Saliency, Classification/: arg_parser defaults SGD, momentum 0.9, weight
# decay 5e-4, batch 256; README: SalUn = RL with the top-50 % mask, 10 epochs at lr 0.013) and
# the Unlearn-Sparse repository's CIFAR-10 commands (FT 10 epochs at 0.01, GA 5 epochs at 1e-4,
# l1-sparse 10 epochs at 0.01; RL takes the shared default 0.01). Their learning rate is
# constant over these epochs (the MultiStepLR milestones, 91 and 136, are never reached).
_SGD_RECIPE: dict[str, Any] = {"optimizer": "sgd", "batch_size": 256, "momentum": 0.9,
                               "weight_decay": 5e-4}
RECIPES: dict[str, dict[str, Any]] = {
    "finetune": {**_SGD_RECIPE, "lr": 0.01, "epochs": 10},
    "gradient_ascent": {**_SGD_RECIPE, "lr": 1e-4, "epochs": 5},
    "random_labels": {**_SGD_RECIPE, "lr": 0.01, "epochs": 10},
    "salun": {**_SGD_RECIPE, "lr": 0.013, "epochs": 10, "mask_ratio": 0.5},
    "l1_sparse": {**_SGD_RECIPE, "lr": 0.01, "epochs": 10, "l1_alpha": 5e-4},
}
# retrain reproduces the user's own training run, which no recipe of ours can guess: these
# fields must be given; the others default to PyTorch's own defaults.
RETRAIN_REQUIRED = ("optimizer", "lr", "epochs", "batch_size")
RETRAIN_DEFAULTS: dict[str, Any] = {"weight_decay": 0.0, "momentum": 0.0}
# Method-specific knobs of the training block and the methods that take them.
METHOD_KNOBS: dict[str, tuple[str, ...]] = {
    "mask_ratio": ("salun",),
    "l1_alpha": ("l1_sparse",),
    "retain_share": ("random_labels", "salun"),
}


class Training(_Strict):
    """The training loop of the E10 methods. Unset fields take the method's published recipe
    (``RECIPES``; ``retrain`` takes the user's own recipe), and the normalised request shows the
    values used. ``epochs`` and ``budget_s`` both bound the loop, whichever is reached first;
    with only ``budget_s`` given the loop runs until the budget is spent."""

    optimizer: Literal["sgd", "adam"] | None = Field(
        None, description="sgd (torch.optim.SGD) or adam (torch.optim.Adam). Default: sgd, the "
                          "recipes' optimizer. Required for retrain.")
    lr: float | None = Field(
        None, gt=0.0, le=10.0,
        description="Constant learning rate. Default: the recipe's (finetune, random_labels, "
                    "l1_sparse 0.01; gradient_ascent 1e-4; salun 0.013), which is an SGD "
                    "recipe: with adam, give it. Required for retrain.")
    epochs: int | None = Field(
        None, ge=1, le=10_000,
        description="Passes over the training data of the method: the retained data "
                    "(finetune, l1_sparse, retrain; for relabel the corrected data), the "
                    "forgotten points (gradient_ascent, as in its recipe), the retained data "
                    "with the forgotten points mixed in (random_labels, salun). Default: the "
                    "recipe's (10; gradient_ascent 5) unless only budget_s is given. Required "
                    "for retrain.")
    budget_s: float | None = Field(
        None, gt=0.0, le=604_800.0,
        description="Stop the loop once it has used this many seconds: process CPU time on "
                    "the CPU, wall time on CUDA (the loop only; loading and evaluation are not "
                    "counted). The result's training.stopped_by says which bound stopped it.")
    batch_size: int | None = Field(
        None, ge=1, le=65_536, description="Default 256 (the recipes). Required for retrain.")
    weight_decay: float | None = Field(
        None, ge=0.0, le=1.0,
        description="The optimizer's L2 weight_decay. Default 5e-4 (the recipes); retrain 0.")
    momentum: float | None = Field(
        None, ge=0.0, lt=1.0,
        description="SGD momentum. Default 0.9 (the recipes); retrain 0. Not taken by adam.")
    mask_ratio: float | None = Field(
        None, gt=0.0, le=1.0,
        description="salun only: the share of all parameters that move, those with the largest "
                    "|gradient of the forgotten points' loss| (the saliency mask). Default 0.5 "
                    "(the SalUn README's mask).")
    l1_alpha: float | None = Field(
        None, ge=0.0, le=1.0,
        description="l1_sparse only: α of the penalty α_t ‖θ‖₁ added to the retained loss, "
                    "decayed linearly over the epochs, α_t = α (1 − epoch / epochs) (the "
                    "Unlearn-Sparse schedule; with only budget_s, over the budget). Default "
                    "5e-4, so the penalty's step (lr·α per weight) stays small beside the "
                    "cross-entropy's; the repository's command line shows --alpha 0.2, the "
                    "default of an argument its other methods share.")
    retain_share: float | None = Field(
        None, gt=0.0, lt=1.0,
        description="random_labels / salun only: the expected share of retained points in a "
                    "batch; the rest are forgotten points (with random wrong labels; relabel: "
                    "their corrected labels), drawn as often as needed. Default null: in "
                    "proportion to the data, so an epoch sees every retained and every "
                    "forgotten point once, shuffled together (the SalUn repository's mixed "
                    "loader).")


def _training_errors(errors: list[tuple[tuple[str, ...], str]], value: Any) -> ValidationError:
    """Errors located inside ``training`` (pydantic prefixes the field's own location)."""
    return ValidationError.from_exception_data("Training", [
        InitErrorDetails(type=PydanticCustomError("training", message.replace("{", "(")),
                         loc=loc, input=value)
        for loc, message in errors
    ])


def effective_training(method: str, training: Training | None) -> Training | None:
    """The training block a method runs with: the request's fields over the method's recipe
    (E10). ``None`` for the influence methods, which take none; a located ``ValidationError``
    for a block that does not fit the method."""
    if method not in TRAINING_METHODS:
        if training is not None:
            raise _training_errors([((), f"method {method!r} does not train; the training "
                                     f"block applies to {', '.join(TRAINING_METHODS)}")], None)
        return None
    if training is None and method == "retrain":
        raise _training_errors([((), "method 'retrain' needs a training block with the recipe "
                                 "the model was trained with: " + ", ".join(RETRAIN_REQUIRED))],
                               None)
    given = training.model_dump(exclude_none=True) if training is not None else {}
    errors = [((knob,), f"training.{knob} applies to {' and '.join(methods)}, not {method}")
              for knob, methods in METHOD_KNOBS.items()
              if knob in given and method not in methods]
    if method == "retrain":
        defaults = RETRAIN_DEFAULTS
        errors += [((name,), f"retrain reproduces the model's own training: give training."
                    f"{name} (the recipe needs {', '.join(RETRAIN_REQUIRED)})")
                   for name in RETRAIN_REQUIRED if name not in given]
    else:
        defaults = RECIPES[method]
        if given.get("optimizer", defaults["optimizer"]) != defaults["optimizer"] \
                and "lr" not in given:
            errors.append((("lr",), f"the {method} recipe's lr is an SGD learning rate; with "
                                    f"optimizer {given['optimizer']!r} give training.lr"))
    optimizer = given.get("optimizer", defaults.get("optimizer"))
    if optimizer == "adam" and "momentum" in given:
        errors.append((("momentum",), "training.momentum is SGD's; adam takes none"))
    if errors:
        raise _training_errors(errors, given)
    filled = {**defaults, **given}
    if "budget_s" in given and "epochs" not in given:
        filled.pop("epochs", None)  # a time budget alone: no epoch bound
    if optimizer == "adam":
        filled.pop("momentum", None)
    return Training(**filled)


class EditRequest(_Strict):
    edit: Edit
    method: Method = Field(
        "gif",
        description="gif | fif | pif | if (influence functions, method.md E2–E5), or a training "
                    "method of E10: finetune | gradient_ascent | random_labels | salun | "
                    "l1_sparse | retrain, which run the training block and ignore selection, "
                    "solver and step. Removal edits take every method; relabel takes the "
                    "influence methods, finetune, random_labels and retrain.")
    training: Training | None = Field(
        None, validate_default=True,
        description="The training loop of the E10 methods, unset fields filled from the "
                    "method's published recipe; retrain requires the recipe the model was "
                    "trained with. Null for the influence methods.")
    selection: Selection = Field(
        default_factory=Selection, description="Parameter selection (ignored by E10 methods).")
    solver: Solver = Field(
        default_factory=Solver, description="The inverse-HVP solve (ignored by E10 methods).")
    step: Step = Field(
        default_factory=Step, description="The step α (ignored by E10 methods).")
    eval: Eval = Field(default_factory=Eval)
    outputs: Outputs = Field(default_factory=Outputs)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d{1,3})?)$")
    seed: int = Field(
        0, ge=0, le=2**32 - 1,
        description="Seeds every random choice: samples, splits, and for the E10 methods the "
                    "batch order, random labels and (retrain) the initialisation.")

    @field_validator("method")
    @classmethod
    def _method_fits_edit(cls, method: str, info: ValidationInfo) -> str:
        edit = info.data.get("edit")
        kinds = TRAINING_METHOD_KINDS.get(method)
        if edit is not None and kinds is not None and edit.kind not in kinds:
            fitting = [*INFLUENCE_METHODS,
                       *(m for m in TRAINING_METHODS if edit.kind in TRAINING_METHOD_KINDS[m])]
            raise ValueError(f"method {method!r} does not apply to a {edit.kind} edit "
                             f"(method.md E10); {edit.kind} takes {', '.join(fitting)}")
        return method

    @field_validator("training")
    @classmethod
    def _training_fits_method(cls, training: Training | None,
                              info: ValidationInfo) -> Training | None:
        method = info.data.get("method")
        if method is None:  # the method itself is invalid and already reported
            return training
        return effective_training(method, training)

    @field_validator("outputs")
    @classmethod
    def _outputs_fit_edit(cls, outputs: Outputs, info: ValidationInfo) -> Outputs:
        edit = info.data.get("edit")
        if outputs.retained_dataset and edit is not None and edit.kind not in REMOVAL_KINDS:
            raise ValueError(f"outputs.retained_dataset applies to removal edits "
                             f"({', '.join(REMOVAL_KINDS)}), not {edit.kind}: a relabel "
                             "forgets no point")
        return outputs

    @property
    def trains(self) -> bool:
        """True for the E10 training methods (``gif.unlearning``), False for GIF's family."""
        return self.method in TRAINING_METHODS

    def normalised(self) -> dict:
        """The request as JSON with every default filled in (what the job object echoes).

        For the E10 methods ``training`` holds the recipe that runs; ``selection``, ``solver``
        and ``step`` are echoed with their defaults but play no part in such an edit."""
        return self.model_dump(mode="json", by_alias=True)
