"""Whether a dataset fits a model, from metadata alone (no torch): the rules
``gif.data.check_dataset_fits`` applies before an edit and the API applies at submission, on
what was stored at upload (:class:`ModelIO` for the model; sample shape and label count for the
dataset). One set of rules, two callers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gif.errors import InvalidRequest

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class ModelIO:
    """What a model takes and gives, known without its weights: the per-sample input shape its
    architecture expects (``None`` entries: any size; ``sample_shape`` None: not known), whether
    it takes flattened samples, and its number of outputs (None: not known)."""

    arch: str
    sample_shape: tuple[int | None, ...] | None
    flat_input: bool
    num_outputs: int | None

    def to_json(self) -> dict[str, Any]:
        shape = list(self.sample_shape) if self.sample_shape is not None else None
        return {"sample_shape": shape, "flat_input": self.flat_input,
                "num_outputs": self.num_outputs}


def check_sample_shape(io: ModelIO, sample: Sequence[int], name: str, loc: Loc) -> None:
    """``InvalidRequest`` when samples of shape ``sample`` cannot feed the model."""
    expected = io.sample_shape
    if io.flat_input:
        features = math.prod(sample)
        if expected is not None and expected[0] is not None and features != expected[0]:
            raise InvalidRequest(f"{io.arch} takes {expected[0]} features; a sample of "
                                 f"{name} has shape {list(sample)} = {features}", loc=loc)
    elif expected is not None and (len(sample) != len(expected) or any(
            e is not None and e != s for e, s in zip(expected, sample, strict=False))):
        shown = ["*" if e is None else e for e in expected]
        raise InvalidRequest(f"{io.arch} takes samples of shape {shown}; {name}'s are "
                             f"{list(sample)}", loc=loc)


def check_channels(mean: Sequence[float] | None, sample: Sequence[int], name: str,
                   loc: Loc) -> None:
    """The input normalisation has one value, or one per channel of the samples."""
    channels = sample[0]
    if mean is not None and len(mean) not in (1, channels):
        raise InvalidRequest(f"the model's input normalisation has {len(mean)} channels; samples "
                             f"of {name} have {channels}", loc=loc)


def check_labels(num_outputs: int | None, num_classes: int, name: str, loc: Loc) -> None:
    """Every label has an output (``num_classes = max label + 1``)."""
    if num_outputs is not None and num_classes > num_outputs:
        raise InvalidRequest(f"{name} has labels up to {num_classes - 1}; the model has "
                             f"{num_outputs} outputs", loc=loc)


def check_fits(io: ModelIO, mean: Sequence[float] | None, sample: Sequence[int],
               num_classes: int, name: str, loc: Loc) -> None:
    """All three checks above, in the order the engine applies them."""
    check_sample_shape(io, sample, name, loc)
    check_channels(mean, sample, name, loc)
    check_labels(io.num_outputs, num_classes, name, loc)
