"""Shaping the result: per-layer changes, the flat update, JSON cleaning, finiteness checks."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from gif.errors import NonFinite


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


def full_update(indices: torch.Tensor, delta: torch.Tensor, size: int,
                 like: torch.Tensor) -> torch.Tensor:
    """``pad_S(Δ_S)`` (E6) on the parameters' device and dtype."""
    full = torch.zeros(size, dtype=like.dtype, device=like.device)
    full[indices.to(like.device)] = delta.to(device=like.device, dtype=like.dtype)
    return full


@torch.no_grad()
def load_flat(model: nn.Module, space, theta: torch.Tensor) -> None:
    """Write the flat ``θ`` into the model's parameters in place (the working copy only)."""
    params = dict(model.named_parameters())
    for name, value in space.unflatten(theta).items():
        params[name].copy_(value)


def copy_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).eval()


def check_finite_state(state: Mapping[str, torch.Tensor], what: str) -> None:
    bad = [k for k, v in state.items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFinite(f"{what} contain NaN or Inf in {bad[:5]}", details={"tensors": bad})


def solver_summary(info: dict) -> dict:
    return {k: info.get(k) for k in ("algorithm", "iterations", "hvps", "residual",
                                     "normal_residual", "seconds", "converged", "stop_reason")}


def json_clean(value: Any) -> Any:
    """Plain JSON types only: NaN/Inf become None (JSON has no NaN), tuples lists."""
    if isinstance(value, dict):
        return {str(k): json_clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_clean(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, torch.Tensor):
        return json_clean(value.tolist())
    return value

