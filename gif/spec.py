"""The model spec uploaded beside a checkpoint (api.md ``POST /v1/models``, form field ``spec``).

Numbers are finite (api.md): ``NaN``, ``Infinity`` and overflowing literals (``1e999``) are
refused in every field, the free-form ``arch_kwargs`` included, and every list and map has a
cap, so nothing a spec holds can overflow or grow without bound further down.

Errors are bounded too, not only the values: a list stops at its first bad item
(``fail_fast``) and a flood of unknown fields is one error (:func:`refuse_field_flood`), so a
body of a million bad entries costs one error, not a million (pydantic collects every one)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_CHANNELS = 1024  # entries of input.mean / input.std
MAX_ARCH_KWARGS = 32  # keys of arch_kwargs
MAX_JSON_ITEMS = 1024  # items of any list or map nested inside arch_kwargs
MAX_JSON_DEPTH = 8  # nesting of lists/maps inside arch_kwargs
INT64_MAX = 2**63 - 1
MAX_UNKNOWN_FIELDS = 20  # past this many unknown fields of one object: one error for them all


def check_json_value(value: Any, where: str = "", depth: int = 0) -> None:
    """Raise ``ValueError`` naming the place of a non-finite number, an integer outside 64
    bits, or a list/map past the caps anywhere in a parsed JSON value."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where or 'value'}: numbers must be finite (no NaN, Infinity or "
                             f"overflowing literals)")
        return
    if isinstance(value, int):
        if abs(value) > INT64_MAX:
            raise ValueError(f"{where or 'value'}: integer {_short(value)} does not fit in 64 "
                             f"bits")
        return
    if depth >= MAX_JSON_DEPTH:
        raise ValueError(f"{where or 'value'}: nested deeper than {MAX_JSON_DEPTH} levels")
    items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
    if len(items) > MAX_JSON_ITEMS:
        raise ValueError(f"{where or 'value'}: more than {MAX_JSON_ITEMS} items")
    for key, item in items:
        check_json_value(item, f"{where}.{key}" if where else str(key), depth + 1)


def refuse_field_flood(model: type[BaseModel], data: Any) -> Any:
    """A ``mode="before"`` check for strict models: more than ``MAX_UNKNOWN_FIELDS`` unknown
    fields are refused with one error, before pydantic would report each one."""
    if isinstance(data, dict) and len(data) > len(model.model_fields) + MAX_UNKNOWN_FIELDS:
        known = {info.alias or name for name, info in model.model_fields.items()}
        unknown = [key for key in data if key not in known and key not in model.model_fields]
        if len(unknown) > MAX_UNKNOWN_FIELDS:
            shown = ", ".join(repr(str(key)[:40]) for key in unknown[:3])
            raise ValueError(f"{len(unknown)} unknown fields ({shown}, ...); the fields are: "
                             f"{', '.join(sorted(known))}")
    return data


def refuse_long(data: Any, limit: int, what: str) -> Any:
    """A ``mode="before"`` check of a map's or list's length, before its items are validated
    (pydantic checks ``max_length`` of a dict only after validating every item)."""
    if isinstance(data, dict | list) and len(data) > limit:
        raise ValueError(f"{what} has {len(data)} entries; at most {limit} are allowed")
    return data


def _short(value: int) -> str:
    digits = str(abs(value)) if value.bit_length() < 4000 else None
    if digits is None or len(digits) > 24:
        return f"of {value.bit_length()} bits"
    return str(value)


class InputSpec(BaseModel):
    """Preprocessing the model was trained with: ``x * scale``, then ``(x - mean) / std``
    per channel."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    scale: float = 1.0
    mean: list[float] | None = Field(None, max_length=MAX_CHANNELS, fail_fast=True)
    std: list[float] | None = Field(None, max_length=MAX_CHANNELS, fail_fast=True)

    @model_validator(mode="before")
    @classmethod
    def _few_unknown(cls, data: Any) -> Any:
        return refuse_field_flood(cls, data)

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both 'mean' and 'std', or neither")
        if self.mean is not None and len(self.mean) != len(self.std or []):
            raise ValueError("'mean' and 'std' must have the same length (one per channel)")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError("every 'std' must be > 0")
        return self


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    arch: str = Field(max_length=100)
    arch_kwargs: dict[str, Any] = Field(default_factory=dict, max_length=MAX_ARCH_KWARGS)
    input: InputSpec = Field(default_factory=InputSpec)
    task: Literal["classification"] = "classification"
    name: str | None = Field(None, max_length=200)

    @model_validator(mode="before")
    @classmethod
    def _few_unknown(cls, data: Any) -> Any:
        return refuse_field_flood(cls, data)

    @field_validator("arch_kwargs", mode="before")
    @classmethod
    def _few_kwargs(cls, value: Any) -> Any:
        return refuse_long(value, MAX_ARCH_KWARGS, "arch_kwargs")

    @field_validator("arch_kwargs")
    @classmethod
    def _finite_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_json_value(value)
        return value
