"""The model spec uploaded beside a checkpoint (API.md ``POST /v1/models``, form field ``spec``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class InputSpec(BaseModel):
    """Preprocessing the model was trained with: ``x * scale``, then ``(x - mean) / std``
    per channel."""

    model_config = ConfigDict(extra="forbid")

    scale: float = 1.0
    mean: list[float] | None = None
    std: list[float] | None = None

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
    model_config = ConfigDict(extra="forbid")

    arch: str
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    input: InputSpec = Field(default_factory=InputSpec)
    task: Literal["classification"] = "classification"
    name: str | None = Field(None, max_length=200)
