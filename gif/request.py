"""The edit request: the JSON body of ``POST /v1/jobs`` (API.md) without ``model_id`` and
``train_dataset_id``. Defined once here, used by the CLI (``gif edit --request``), by the
service (which adds the two ids) and by the worker. Unknown fields are rejected so a typo
(``"mehtod"``) is an error naming the field, not a silently ignored option."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Phases of an edit job, in order (API.md ``progress.phase``).
PHASES = ("load", "select", "solve", "step_search", "evaluate", "save")
REMOVAL_KINDS = ("remove_class", "remove_samples")
# Keys of ``metrics.before/after`` that the edit fills itself; eval sets may not take them.
RESERVED_SET_NAMES = ("forget", "relabeled", "retain", "score", "retained_grad_norm", "mia")



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RemoveClass(_Strict):
    """Forget every training point of one class."""

    kind: Literal["remove_class"]
    class_: int = Field(alias="class", ge=0, description="The label to forget.")


class RemoveSamples(_Strict):
    """Forget the listed training points (indices into the train dataset)."""

    kind: Literal["remove_samples"]
    indices: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> RemoveSamples:
        if len(set(self.indices)) != len(self.indices):
            raise ValueError("indices must be unique")
        return self


class Relabel(_Strict):
    """Change the labels of the listed points to ``labels`` (e.g. undo a backdoor)."""

    kind: Literal["relabel"]
    indices: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)
    labels: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)

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
    """Which parameters move (MATH.md, Parameter selection)."""

    criterion: Literal["topk_outputs", "topk_gradients", "threshold", "random"] = "topk_outputs"
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


class Solver(_Strict):
    """The inverse-HVP solve (MATH.md E7, E8)."""

    algorithm: Literal["lsqr", "neumann", "cg"] = "lsqr"
    max_iter: int = Field(100, ge=1, le=10_000)
    tol: float = Field(1e-4, gt=0.0, lt=1.0)
    damping: float = Field(0.0, ge=0.0)
    hessian_samples: int | None = Field(1024, ge=1, description="Retained points in H; null: all.")
    edit_samples: int | None = Field(1024, ge=1, description="Edited points in b; null: all.")
    batch_size: int = Field(256, ge=1, le=65_536, description="Micro-batch size of each HVP.")


class Step(_Strict):
    """The step α of MATH.md E9."""

    mode: Literal["auto", "fixed"] = "auto"
    scale: float = Field(1.0, gt=0.0, le=1e6, description="α for mode=fixed.")
    validation_fraction: float = Field(0.1, gt=0.0, le=0.5)
    holdout_dataset_id: str | None = Field(
        None, min_length=1, max_length=200,
        description="Data the model never trained on (non-members), used only to tune a sample "
                    "removal (MATH.md E9); never reported as an evaluation set. Without it the "
                    "sample-removal objective falls back to the retained validation split.",
    )


class Eval(_Strict):
    datasets: dict[str, str] = Field(
        default_factory=dict,
        description="Name → dataset id of evaluation sets (never used to tune).",
    )
    mia: bool = False
    retain_samples: int = Field(
        2048, ge=1, description="Size of the retained-data sample evaluated."
    )


class EditRequest(_Strict):
    edit: Edit
    method: Literal["gif", "fif", "pif", "if"] = "gif"
    selection: Selection = Field(default_factory=Selection)
    solver: Solver = Field(default_factory=Solver)
    step: Step = Field(default_factory=Step)
    eval: Eval = Field(default_factory=Eval)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    seed: int = Field(0, ge=0, le=2**32 - 1)

    def normalised(self) -> dict:
        """The request as JSON with every default filled in (what the job object echoes)."""
        return self.model_dump(mode="json", by_alias=True)
