"""The flat parameter space θ ∈ R^p (method.md, Notation).

Every method (E1–E5) works on one flat vector: the trainable parameters of
``model.named_parameters()`` in that order. ``ParamSpace`` records where each named tensor lives
in that vector, so selections (``S``), gradients, HVPs and updates can move between the
``name -> tensor`` world of PyTorch and the flat world of the solvers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ParamSpace:
    """Layout of θ: ``names[i]`` is ``θ[offsets[i]:][:numels[i]]``, of shape ``shapes[i]``."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    numels: tuple[int, ...]
    offsets: tuple[int, ...]

    @classmethod
    def from_model(cls, model: nn.Module) -> ParamSpace:
        """The trainable parameters of ``model`` in ``named_parameters()`` order."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return cls.from_shapes({name: param.shape for name, param in named})

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, torch.Size | tuple[int, ...]]) -> ParamSpace:
        """A space over named shapes, in the mapping's order."""
        sizes = [torch.Size(shape) for shape in shapes.values()]
        numels = [math.prod(size) for size in sizes]
        offsets = [sum(numels[:i]) for i in range(len(numels))]
        return cls(tuple(shapes), tuple(sizes), tuple(numels), tuple(offsets))

    @property
    def size(self) -> int:
        """p, the length of θ."""
        return sum(self.numels)

    def slice_of(self, name: str) -> slice:
        """Where ``name`` lives in θ."""
        i = self._position(name)
        return slice(self.offsets[i], self.offsets[i] + self.numels[i])

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate ``tensors[name]`` for every name of the space into one vector of length p."""
        missing = [name for name in self.names if name not in tensors]
        if missing:
            raise KeyError(f"tensors for these parameters are missing: {missing}")
        return torch.cat([tensors[name].reshape(-1) for name in self.names])

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a length-p vector into named views with the parameters' shapes (differentiable)."""
        if vector.ndim != 1 or vector.numel() != self.size:
            raise ValueError(
                f"expected a vector of length {self.size}, got shape {tuple(vector.shape)}"
            )
        pieces = torch.split(vector, list(self.numels))
        return {
            name: piece.view(shape)
            for name, piece, shape in zip(self.names, pieces, self.shapes, strict=True)
        }

    def indices(self, masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Flat indices (sorted, int64) of the entries selected by boolean ``masks``.

        A name absent from ``masks`` is entirely unselected; a mask must have its parameter's shape.
        """
        unknown = sorted(set(masks) - set(self.names))
        if unknown:
            raise KeyError(f"masks name parameters that are not in the space: {unknown}")
        chunks = []
        for name, shape, offset in zip(self.names, self.shapes, self.offsets, strict=True):
            if name not in masks:
                continue
            mask = masks[name]
            if mask.dtype != torch.bool or mask.shape != shape:
                raise ValueError(
                    f"mask of {name!r} must be a bool tensor of shape {tuple(shape)}, "
                    f"got {mask.dtype} {tuple(mask.shape)}"
                )
            chunks.append(
                torch.nonzero(mask.reshape(-1).cpu(), as_tuple=False).reshape(-1) + offset
            )
        if not chunks:
            return torch.zeros(0, dtype=torch.long)
        return torch.cat(chunks)

    def masks(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """The inverse of ``indices``: one boolean mask per parameter (all of them, CPU)."""
        flat = torch.zeros(self.size, dtype=torch.bool)
        flat[indices.cpu()] = True
        return {name: m.clone() for name, m in self.unflatten(flat).items()}

    def _position(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"{name!r} is not a parameter of the space") from None


def scatter(values: torch.Tensor, indices: torch.Tensor, size: int) -> torch.Tensor:
    """``pad_S(v)`` of method.md E6: length ``size``, ``values`` at ``indices``, zero elsewhere."""
    out = torch.zeros(size, dtype=values.dtype, device=values.device)
    out[indices.to(values.device)] = values
    return out


def apply_update(
    state_dict: Mapping[str, torch.Tensor],
    space: ParamSpace,
    indices: torch.Tensor,
    delta: torch.Tensor,
    alpha: float = 1.0,
) -> dict[str, torch.Tensor]:
    """θ_S ← θ_S + α Δ_S (method.md E9), returned as a new state dict; the input is not mutated.

    Every tensor of the result is a fresh copy (buffers too), so callers may edit it in place.
    ``indices`` and ``delta`` are what ``methods.solve_edit`` returns; entries of θ outside
    ``indices`` keep their values.
    """
    if indices.numel() != delta.numel():
        raise ValueError(f"{indices.numel()} indices but {delta.numel()} update values")
    new_state = {key: value.detach().clone() for key, value in state_dict.items()}
    theta = space.flatten(new_state)
    step = (alpha * delta.detach()).to(device=theta.device, dtype=theta.dtype)
    theta = theta.index_add(0, indices.to(theta.device), step)
    for name, value in space.unflatten(theta).items():
        new_state[name] = value.clone()
    return new_state
