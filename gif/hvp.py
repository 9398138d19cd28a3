"""Losses, mean-loss gradients and Hessian-vector products with ``torch.func`` (method.md E1, E6).

``H = ∇² mean_{(x,y)} L`` is never formed: ``make_hvp`` returns a callable ``v -> H v`` over the
flat parameter vector θ (``gif.params.ParamSpace``). The model is always evaluated in eval mode
(frozen BatchNorm statistics, no dropout) and its buffers are passed through
``torch.func.functional_call``; the model object itself is never modified.

Two ways to apply ``H``:

- ``"jvp"`` — forward-over-reverse, ``torch.func.jvp(torch.func.grad(f), (θ,), (v,))``: memory of
  one micro-batch's forward and backward at a time.
- ``"double_backward"`` — the gradient graph of every micro-batch is built once
  (``create_graph=True``) and retained; each product is one backward through it. Faster, but it
  keeps one graph per micro-batch, so it is only chosen when that fits a memory budget.

``mode="auto"`` picks double backward when it fits (it was faster in ``bench/bench_hvp.py``),
else jvp.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp

from gif.errors import Cancelled, NonFinite
from gif.params import ParamSpace

ShouldStop = Callable[[], bool]
"""Polled between micro-batches; ``True`` raises ``gif.errors.Cancelled``."""

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss(outputs, targets) -> scalar``: the mean of the per-example loss over the batch."""


def cross_entropy_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits against integer labels (classification, method.md Notation)."""
    return F.cross_entropy(outputs, targets.long())


def squared_error_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over examples of the squared error summed over outputs (regression, E1's toy)."""
    diff = outputs - targets.to(outputs.dtype).reshape(outputs.shape)
    return diff.pow(2).reshape(diff.shape[0], -1).sum(dim=1).mean()


LOSSES: dict[str, LossFn] = {"cross_entropy": cross_entropy_loss, "mse": squared_error_loss}


def resolve_loss(loss: str | LossFn) -> LossFn:
    """A loss by name (``"cross_entropy"``, ``"mse"``) or a callable ``loss(outputs, targets)``."""
    if callable(loss):
        return loss
    try:
        return LOSSES[loss]
    except KeyError:
        raise ValueError(f"unknown loss {loss!r}; choose one of {sorted(LOSSES)}") from None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluate in eval mode and restore every module's ``training`` flag afterwards."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


@dataclass(frozen=True)
class MicroBatch:
    """One slice of the data on the parameters' device, with its weight ``n_b / N`` in the mean."""

    x: torch.Tensor
    y: torch.Tensor
    weight: float


def micro_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, *, device: torch.device, dtype: torch.dtype
) -> list[MicroBatch]:
    """Cut (x, y) into micro-batches moved to ``device`` once; floating inputs get ``dtype``.

    The weights make ``Σ_b weight_b · mean_b L`` equal the mean over all of (x, y).
    """
    n = x.shape[0]
    if n == 0 or y.shape[0] != n:
        raise ValueError(
            f"need a non-empty batch with as many targets as inputs ({n} vs {y.shape[0]})"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches = []
    for start in range(0, n, batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        xb = xb.to(device=device, dtype=dtype) if xb.is_floating_point() else xb.to(device)
        yb = yb.to(device=device, dtype=dtype) if yb.is_floating_point() else yb.to(device)
        batches.append(MicroBatch(xb, yb, xb.shape[0] / n))
    return batches


@dataclass(frozen=True)
class FlatLoss:
    """The mean loss as a function of the flat θ: what ``torch.func`` differentiates (E6).

    Built once per solve: the layout, the detached parameters and buffers, the loss function.
    """

    model: nn.Module
    space: ParamSpace
    theta: torch.Tensor
    buffers: dict[str, torch.Tensor]
    loss_fn: LossFn

    @classmethod
    def from_model(cls, model: nn.Module, loss: str | LossFn) -> FlatLoss:
        space = ParamSpace.from_model(model)
        if space.size == 0:
            raise ValueError("the model has no trainable parameters")
        params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        buffers = {n: b.detach() for n, b in model.named_buffers()}
        return cls(model, space, space.flatten(params), buffers, resolve_loss(loss))

    def __call__(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean loss of the model with parameters ``theta`` on (x, y); call inside ``eval_mode``."""
        tensors = {**self.buffers, **self.space.unflatten(theta)}
        outputs = functional_call(self.model, tensors, (x,))
        return self.loss_fn(outputs, y)


def check_cancel(should_stop: ShouldStop | None, what: str, done: int, total: int) -> None:
    """Raise ``Cancelled`` when the caller asked to stop (between two micro-batches)."""
    if should_stop is not None and should_stop():
        raise Cancelled(
            f"cancelled during {what} after {done} of {total} micro-batches",
            details={"phase": what, "micro_batches_done": done, "micro_batches": total},
        )


def check_finite(name: str, value: torch.Tensor) -> torch.Tensor:
    """Raise ``NonFinite`` when ``value`` holds a NaN or Inf (it would poison the whole solve)."""
    if not bool(torch.isfinite(value).all()):
        raise NonFinite(f"{name} contains NaN or Inf", details={"where": name})
    return value


def mean_loss_grad(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss: str | LossFn = "cross_entropy",
    batch_size: int = 256,
    params: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
    should_stop: ShouldStop | None = None,
) -> torch.Tensor:
    """Flat ``∇_θ mean_{(x,y)} L(θ)`` (the gradient in E1's right-hand sides).

    Accumulated over micro-batches weighted by their size, so memory is bounded by ``batch_size``.
    ``params`` (flat vector or ``name -> tensor``) evaluates at other parameters than the model's.
    ``should_stop`` is polled before every micro-batch (``Cancelled``).
    """
    flat_loss = FlatLoss.from_model(model, loss)
    theta = _as_flat(flat_loss, params)
    batches = micro_batches(x, y, batch_size, device=theta.device, dtype=theta.dtype)
    grad_fn = grad(flat_loss)
    total = torch.zeros_like(theta)
    with eval_mode(model), torch.no_grad():
        for done, batch in enumerate(batches):
            check_cancel(should_stop, "the loss gradient", done, len(batches))
            total.add_(grad_fn(theta, batch.x, batch.y), alpha=batch.weight)
    return check_finite("the loss gradient", total)


def _as_flat(
    flat_loss: FlatLoss, params: torch.Tensor | Mapping[str, torch.Tensor] | None
) -> torch.Tensor:
    if params is None:
        return flat_loss.theta
    if isinstance(params, Mapping):
        params = flat_loss.space.flatten(params)
    if params.shape != flat_loss.theta.shape:
        raise ValueError(
            f"params must have length {flat_loss.space.size}, got {tuple(params.shape)}"
        )
    return params.detach().to(device=flat_loss.theta.device, dtype=flat_loss.theta.dtype)


class HVP:
    """``v -> H v`` for ``H = ∇² mean loss`` at fixed θ (method.md E6); ``calls`` counts HVPs."""

    def __init__(
        self,
        apply: Callable[[torch.Tensor], torch.Tensor],
        *,
        size: int,
        dtype: torch.dtype,
        device: torch.device,
        mode: str,
        space: ParamSpace,
        graph_bytes: int | None = None,
    ):
        self._apply = apply
        self.size = size
        self.dtype = dtype
        self.device = device
        self.mode = mode
        self.space = space
        self.graph_bytes = graph_bytes
        self.calls = 0

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        if vector.shape != (self.size,):
            raise ValueError(
                f"expected a vector of length {self.size}, got shape {tuple(vector.shape)}"
            )
        self.calls += 1
        product = self._apply(vector.detach().to(device=self.device, dtype=self.dtype))
        return check_finite("a Hessian-vector product", product)


def make_hvp(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss: str | LossFn = "cross_entropy",
    batch_size: int = 256,
    mode: str = "auto",
    memory_budget_bytes: int | None = None,
    should_stop: ShouldStop | None = None,
) -> HVP:
    """The HVP of E6 for the mean loss over all of (x, y) at the model's current parameters.

    ``mode``: ``"jvp"`` (forward-over-reverse), ``"double_backward"`` (gradient graphs built
    once and retained), or ``"auto"``: double backward when its retained graphs fit
    ``memory_budget_bytes`` (default: half the free memory of the parameters' device), else jvp.
    Everything reusable (the functional loss, θ, the micro-batches on the device) is built here,
    once per solve, not once per product. ``should_stop`` is polled before every micro-batch,
    of the graph build and of each jvp product (``Cancelled``), so a cancelled job stops
    within one micro-batch even when one HVP runs over many of them.
    """
    if mode not in ("auto", "jvp", "double_backward"):
        raise ValueError(f"unknown HVP mode {mode!r}; choose auto, jvp or double_backward")
    flat_loss = FlatLoss.from_model(model, loss)
    theta = flat_loss.theta
    batches = micro_batches(x, y, batch_size, device=theta.device, dtype=theta.dtype)
    if mode == "jvp":
        return _jvp_hvp(flat_loss, batches, should_stop)
    budget = (
        default_memory_budget(theta.device) if memory_budget_bytes is None else memory_budget_bytes
    )
    limit = budget if mode == "auto" else None
    built = _double_backward_hvp(flat_loss, batches, memory_limit=limit, should_stop=should_stop)
    return built if built is not None else _jvp_hvp(flat_loss, batches, should_stop)


def _jvp_hvp(
    flat_loss: FlatLoss, batches: list[MicroBatch], should_stop: ShouldStop | None = None
) -> HVP:
    """Forward-over-reverse (E6): ``H v = Σ_b w_b · d/dt ∇L_b(θ + t v)``, batch by batch."""
    grad_fn = grad(flat_loss)
    theta, model = flat_loss.theta, flat_loss.model

    def apply(vector: torch.Tensor) -> torch.Tensor:
        total = torch.zeros_like(theta)
        with eval_mode(model), torch.no_grad():
            for done, batch in enumerate(batches):
                check_cancel(should_stop, "a Hessian-vector product", done, len(batches))
                _, tangent = jvp(lambda t, b=batch: grad_fn(t, b.x, b.y), (theta,), (vector,))
                total.add_(tangent, alpha=batch.weight)
        return total

    return HVP(
        apply,
        size=theta.numel(),
        dtype=theta.dtype,
        device=theta.device,
        mode="jvp",
        space=flat_loss.space,
    )


def _double_backward_hvp(
    flat_loss: FlatLoss,
    batches: list[MicroBatch],
    *,
    memory_limit: int | None,
    should_stop: ShouldStop | None = None,
) -> HVP | None:
    """Double backward (E6): build ``g = Σ_b w_b ∇L_b`` with ``create_graph=True`` once, then
    ``H v = ∂(g·v)/∂θ`` per product with the graph retained.

    With a ``memory_limit``, the first micro-batch's graph is measured and the whole is estimated
    from it; ``None`` is returned (nothing kept) when the estimate exceeds the limit.
    """
    theta = flat_loss.theta.detach().clone().requires_grad_(True)
    model = flat_loss.model
    total_grad = None
    graph_bytes = 0
    with eval_mode(model), torch.enable_grad():
        for position, batch in enumerate(batches):
            check_cancel(should_stop, "the Hessian's gradient graph", position, len(batches))
            with _measure_graph_bytes(theta.device) as measured:
                loss = flat_loss(theta, batch.x, batch.y) * batch.weight
                (batch_grad,) = torch.autograd.grad(loss, theta, create_graph=True)
            graph_bytes += measured()
            total_grad = batch_grad if total_grad is None else total_grad + batch_grad
            if position == 0 and memory_limit is not None:
                estimate = graph_bytes * len(batches)
                if estimate > memory_limit:
                    return None
    check_finite("the loss gradient", total_grad.detach())

    def apply(vector: torch.Tensor) -> torch.Tensor:
        with eval_mode(model):
            (product,) = torch.autograd.grad(
                total_grad, theta, grad_outputs=vector, retain_graph=True
            )
        return product.detach()

    return HVP(
        apply,
        size=theta.numel(),
        dtype=theta.dtype,
        device=theta.device,
        mode="double_backward",
        space=flat_loss.space,
        graph_bytes=graph_bytes,
    )


@contextlib.contextmanager
def _measure_graph_bytes(device: torch.device) -> Iterator[Callable[[], int]]:
    """Bytes kept alive by the autograd graph built inside the block.

    On CUDA: the growth of allocated memory. Elsewhere: the distinct storages the graph saves
    (counted with saved-tensor hooks, each storage once).
    """
    if device.type == "cuda":
        before = torch.cuda.memory_allocated(device)
        result = {"bytes": 0}
        yield lambda: result["bytes"]
        result["bytes"] = max(torch.cuda.memory_allocated(device) - before, 0)
        return
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield lambda: sum(storages.values())


def default_memory_budget(device: torch.device) -> int:
    """Half of the free memory of ``device`` (CUDA) or of the machine (CPU)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        available = 2 * 1024**3
    return available // 2
