"""Parameter selection, paper §4 (method.md "Parameter selection"): which entries ``S`` of θ move.

Eligible layers are ``Linear`` and ``Conv1d/2d/3d`` whose weight is trainable and their own
(a weight tied to another module — e.g. an embedding — stays with its first owner). Normalisation
layers, embeddings and everything else are never selected; they stay in θ as fixed parameters.

Each eligible layer ``l`` with ``n_l`` parameters (weight + bias) gets exactly
``k_l = floor(ratio · n_l)`` selected entries (``ratio`` is taken as the decimal it prints as, so
``0.29 · 100`` is 29, not 28). The unit of ranking is an output unit ``j`` (a neuron or a
channel): its fan-in row ``W[j]`` plus ``bias[j]``, ``u = fan_in + 1`` entries.

- ``topk_outputs``: ``s_j = |mean over batch and positions of output j|`` on the edited points
  ``U``; the best ``floor(k_l / u)`` units whole, the remaining ``k_l mod u`` entries drawn at
  random from the next-ranked unit.
- ``topk_gradients``: the same with ``s_j = |mean of ∂L_U/∂(output j)|``, ``L_U`` the mean loss
  on ``U``.
- ``threshold``: units with ``s_j > τ`` (output scores); ``k_l`` entries drawn uniformly from
  their parameters. If they hold fewer than ``k_l`` entries, ``τ`` is lowered for that layer
  only, just enough: units are admitted in score order until they hold ``k_l``.
- ``random``: ``k_l`` entries of the layer uniformly at random.

Scores come from one pass over ``U`` in micro-batches, in eval mode (no dropout, frozen
BatchNorm statistics), through forward hooks that are removed afterwards; the model's training
flags and parameters are left as they were (no ``.grad`` is written). Ties in the ranking and
every random draw use one generator seeded with ``seed``, consumed in layer order, so a selection
is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import torch
from torch import nn

from gif.errors import InvalidRequest, NonFinite
from gif.hvp import ShouldStop, check_cancel, eval_mode, resolve_loss

ELIGIBLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
CRITERIA = ("topk_outputs", "topk_gradients", "threshold", "random")


@dataclass(frozen=True)
class EligibleLayer:
    """One Linear/Conv layer seen as ``num_units`` output units of ``unit_size`` entries each."""

    name: str
    module: nn.Module = field(repr=False)
    weight_name: str
    bias_name: str | None
    num_units: int
    fan_in: int

    @property
    def unit_size(self) -> int:
        return self.fan_in + (1 if self.bias_name is not None else 0)

    @property
    def num_params(self) -> int:
        return self.num_units * self.unit_size

    @property
    def channel_axis(self) -> int:
        """Where the output units sit in the layer's output: last for Linear, 1 for Conv."""
        return -1 if isinstance(self.module, nn.Linear) else 1


def eligible_layers(model: nn.Module) -> list[EligibleLayer]:
    """The Linear/Conv1d/2d/3d layers of ``model`` with a trainable weight of their own."""
    first_name = {}
    for name, param in model.named_parameters():
        first_name.setdefault(id(param), name)
    layers = []
    for module_name, module in model.named_modules():
        if not isinstance(module, ELIGIBLE_TYPES):
            continue
        prefix = f"{module_name}." if module_name else ""
        weight = module.weight
        if not weight.requires_grad or first_name.get(id(weight)) != prefix + "weight":
            continue
        bias = module.bias
        has_bias = (bias is not None and bias.requires_grad
                    and first_name.get(id(bias)) == prefix + "bias")
        layers.append(EligibleLayer(
            name=module_name, module=module, weight_name=prefix + "weight",
            bias_name=prefix + "bias" if has_bias else None,
            num_units=int(weight.shape[0]), fan_in=int(weight[0].numel()),
        ))
    return layers


def layer_budget(ratio: float, num_params: int) -> int:
    """``k_l = floor(ratio · n_l)`` exactly, with ``ratio`` read as the decimal it prints as."""
    return math.floor(Fraction(repr(float(ratio))) * num_params)


@dataclass(frozen=True)
class Selection:
    """The selected entries ``S``: one bool mask per trainable parameter (its shape), plus a
    per-layer account. ``num_eligible`` counts the entries of the eligible layers."""

    masks: dict[str, torch.Tensor]
    per_layer: list[dict]
    num_selected: int
    num_eligible: int
    num_parameters: int
    criterion: str
    ratio: float
    seed: int

    def to_dict(self) -> dict:
        """JSON-able summary (no tensors), the shape of api.md's ``result.selection``."""
        return {
            "criterion": self.criterion, "ratio": self.ratio, "seed": self.seed,
            "num_selected": self.num_selected, "num_eligible": self.num_eligible,
            "num_parameters": self.num_parameters,
            "per_layer": [dict(layer) for layer in self.per_layer],
        }


# --------------------------------------------------------------------------- scores


def _per_unit(tensor: torch.Tensor, layer: EligibleLayer) -> tuple[torch.Tensor, int]:
    """(sum over batch and positions of each unit's values in float64, values per unit)."""
    moved = tensor.detach().movedim(layer.channel_axis, 0).reshape(layer.num_units, -1)
    return moved.double().sum(dim=1).cpu(), moved.shape[1]


class _UnitMeans:
    """Running ``mean over batch and positions`` per unit, per layer."""

    def __init__(self, layers: list[EligibleLayer]):
        self.sums = {layer.name: torch.zeros(layer.num_units, dtype=torch.float64)
                     for layer in layers}
        self.counts = dict.fromkeys(self.sums, 0)

    def add(self, layer: EligibleLayer, tensor: torch.Tensor) -> None:
        total, count = _per_unit(tensor, layer)
        self.sums[layer.name] += total
        self.counts[layer.name] += count

    def abs_means(self) -> dict[str, torch.Tensor]:
        return {name: (total / max(self.counts[name], 1)).abs()
                for name, total in self.sums.items()}


def _batches(x: torch.Tensor, y: torch.Tensor, batch_size: int):
    for start in range(0, x.shape[0], batch_size):
        yield x[start:start + batch_size], y[start:start + batch_size]


def _model_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    param = next(model.parameters())
    if x.is_floating_point():
        return x.to(device=param.device, dtype=param.dtype)
    return x.to(param.device)


def output_scores(model: nn.Module, layers: list[EligibleLayer], x: torch.Tensor,
                  batch_size: int, should_stop: ShouldStop | None = None
                  ) -> dict[str, torch.Tensor]:
    """``s_j = |mean over batch and positions of output j|`` for every eligible layer, in eval
    mode (training flags restored afterwards). ``should_stop`` is polled before every batch."""
    means = _UnitMeans(layers)

    def hook_for(layer: EligibleLayer) -> Callable:
        def hook(_module, _inputs, output):
            means.add(layer, output)
        return hook

    handles = [layer.module.register_forward_hook(hook_for(layer)) for layer in layers]
    try:
        with torch.no_grad(), eval_mode(model):
            batches = x.split(batch_size)
            for done, xb in enumerate(batches):
                check_cancel(should_stop, "the selection's output scores", done, len(batches))
                model(_model_input(model, xb))
    finally:
        for handle in handles:
            handle.remove()
    return means.abs_means()


def gradient_scores(model: nn.Module, layers: list[EligibleLayer], x: torch.Tensor,
                    y: torch.Tensor, batch_size: int, loss: str,
                    should_stop: ShouldStop | None = None) -> dict[str, torch.Tensor]:
    """``s_j = |mean of ∂L_U/∂(output j)|``, ``L_U`` the mean loss over all of ``U``, in eval
    mode; gradients are taken with respect to the outputs only (no ``.grad`` is written).
    ``should_stop`` is polled before every batch."""
    loss_fn = resolve_loss(loss)
    means = _UnitMeans(layers)
    captured: list[tuple[EligibleLayer, torch.Tensor]] = []

    def hook_for(layer: EligibleLayer) -> Callable:
        def hook(_module, _inputs, output):
            captured.append((layer, output))
            # Later in-place ops (ReLU(inplace=True)) then modify the clone, so the captured
            # tensor is the layer's own output and its gradient is ∂L/∂(output).
            return output.clone()
        return hook

    handles = [layer.module.register_forward_hook(hook_for(layer)) for layer in layers]
    total = x.shape[0]
    try:
        with torch.enable_grad(), eval_mode(model):
            num_batches = math.ceil(total / batch_size)
            for done, (xb, yb) in enumerate(_batches(x, y, batch_size)):
                check_cancel(should_stop, "the selection's gradient scores", done, num_batches)
                captured.clear()
                xb = _model_input(model, xb)
                if xb.is_floating_point():
                    xb = xb.detach().requires_grad_(True)  # every output then needs a gradient
                param = next(model.parameters())
                yb = yb.to(param.device)
                batch_loss = loss_fn(model(xb), yb) * (xb.shape[0] / total)
                live = [(layer, out) for layer, out in captured if out.requires_grad]
                if not live:
                    continue
                grads = torch.autograd.grad(batch_loss, [out for _, out in live],
                                            allow_unused=True)
                for (layer, out), g in zip(live, grads, strict=True):
                    means.add(layer, torch.zeros_like(out) if g is None else g)
    finally:
        for handle in handles:
            handle.remove()
    return means.abs_means()


# --------------------------------------------------------------------------- choosing


def _ranked_units(scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Unit indices by descending score; ties in a seeded random order."""
    shuffled = torch.randperm(scores.numel(), generator=generator)
    _, order = torch.sort(scores[shuffled], descending=True, stable=True)
    return shuffled[order]


def _choose_topk(scores: torch.Tensor, layer: EligibleLayer, budget: int,
                 generator: torch.Generator) -> torch.Tensor:
    """Best ``budget // u`` units whole, the rest drawn from the next-ranked unit."""
    chosen = torch.zeros(layer.num_units, layer.unit_size, dtype=torch.bool)
    whole, rest = divmod(budget, layer.unit_size)
    order = _ranked_units(scores, generator)
    chosen[order[:whole]] = True
    if rest:
        entries = torch.randperm(layer.unit_size, generator=generator)[:rest]
        chosen[order[whole], entries] = True
    return chosen


def _choose_threshold(scores: torch.Tensor, layer: EligibleLayer, budget: int, tau: float,
                      generator: torch.Generator) -> tuple[torch.Tensor, float, bool]:
    """``budget`` entries uniformly from the units scoring above ``tau``, after lowering
    ``tau`` (this layer only) until the passing units hold ``budget`` entries."""
    passing = scores > tau
    lowered = int(passing.sum()) * layer.unit_size < budget
    effective = tau
    if lowered:
        needed = math.ceil(budget / layer.unit_size)
        admitted = _ranked_units(scores, generator)[:needed]
        passing = torch.zeros_like(passing)
        passing[admitted] = True
        effective = float(scores[admitted].min())
    candidates = (passing.unsqueeze(1).expand(-1, layer.unit_size).reshape(-1)
                  .nonzero().reshape(-1))
    picked = candidates[torch.randperm(candidates.numel(), generator=generator)[:budget]]
    chosen = torch.zeros(layer.num_params, dtype=torch.bool)
    chosen[picked] = True
    return chosen.view(layer.num_units, layer.unit_size), effective, lowered


def _choose_random(layer: EligibleLayer, budget: int, generator: torch.Generator) -> torch.Tensor:
    chosen = torch.zeros(layer.num_params, dtype=torch.bool)
    chosen[torch.randperm(layer.num_params, generator=generator)[:budget]] = True
    return chosen.view(layer.num_units, layer.unit_size)


def _unit_masks(layer: EligibleLayer, chosen: torch.Tensor) -> dict[str, torch.Tensor]:
    """Units × entries back to parameter-shaped masks (entry ``fan_in`` is the bias)."""
    masks = {layer.weight_name: chosen[:, :layer.fan_in].reshape(layer.module.weight.shape)
             .clone()}
    if layer.bias_name is not None:
        masks[layer.bias_name] = chosen[:, layer.fan_in].clone()
    return masks


# --------------------------------------------------------------------------- API


def _validate(criterion: str, ratio: float, threshold: float | None, batch_size: int,
              x: torch.Tensor, y: torch.Tensor) -> None:
    if criterion not in CRITERIA:
        raise InvalidRequest(f"unknown selection criterion {criterion!r} (choose one of "
                             f"{', '.join(CRITERIA)})", loc=("selection", "criterion"))
    if not (isinstance(ratio, int | float) and 0 < ratio <= 1):
        raise InvalidRequest(f"selection ratio must be in (0, 1], got {ratio!r}",
                             loc=("selection", "ratio"))
    if criterion == "threshold" and (threshold is None or not threshold >= 0):
        raise InvalidRequest("criterion 'threshold' needs a threshold >= 0",
                             loc=("selection", "threshold"))
    if batch_size < 1:
        raise InvalidRequest(f"batch_size must be >= 1, got {batch_size}",
                             loc=("solver", "batch_size"))
    if criterion != "random" and (x.shape[0] == 0 or x.shape[0] != y.shape[0]):
        raise InvalidRequest(f"selection needs the edited points: got {x.shape[0]} inputs and "
                             f"{y.shape[0]} targets", loc=("edit",))


def select_parameters(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    criterion: str,
    ratio: float,
    threshold: float | None = None,
    seed: int,
    batch_size: int,
    loss: str = "cross_entropy",
    should_stop: ShouldStop | None = None,
) -> Selection:
    """Paper §4 selection (method.md "Parameter selection") on the edited points ``U``.

    ``x``: the preprocessed float inputs of ``U``; ``y``: their targets (for ``topk_gradients``).
    Returns masks for every trainable parameter; non-eligible ones are all False.
    ``should_stop`` (cancel) is polled before every scoring batch (``Cancelled``)."""
    _validate(criterion, ratio, threshold, batch_size, x, y)
    layers = eligible_layers(model)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    scores: dict[str, torch.Tensor] = {}
    if layers and criterion == "topk_gradients":
        scores = gradient_scores(model, layers, x, y, batch_size, loss, should_stop)
    elif layers and criterion != "random":
        scores = output_scores(model, layers, x, batch_size, should_stop)
    for name, values in scores.items():
        if not bool(torch.isfinite(values).all()):
            raise NonFinite(f"non-finite {criterion} scores in layer {name!r} during selection")

    generator = torch.Generator().manual_seed(int(seed))
    masks = {name: torch.zeros(p.shape, dtype=torch.bool) for name, p in trainable.items()}
    per_layer = []
    for layer in layers:
        budget = layer_budget(ratio, layer.num_params)
        extra: dict = {}
        if criterion == "random":
            chosen = _choose_random(layer, budget, generator)
        elif criterion == "threshold":
            chosen, used, lowered = _choose_threshold(scores[layer.name], layer, budget,
                                                      float(threshold), generator)
            extra = {"threshold": used, "threshold_lowered": lowered}
        else:
            chosen = _choose_topk(scores[layer.name], layer, budget, generator)
        masks.update(_unit_masks(layer, chosen))
        per_layer.append({
            "layer": layer.name, "type": type(layer.module).__name__,
            "num_params": layer.num_params, "num_selected": int(chosen.sum()),
            "ratio": int(chosen.sum()) / layer.num_params, "units": layer.num_units,
            "units_selected": int(chosen.any(dim=1).sum()), **extra,
        })
    return Selection(
        masks=masks, per_layer=per_layer,
        num_selected=sum(entry["num_selected"] for entry in per_layer),
        num_eligible=sum(layer.num_params for layer in layers),
        num_parameters=sum(p.numel() for p in trainable.values()),
        criterion=criterion, ratio=float(ratio), seed=int(seed),
    )
