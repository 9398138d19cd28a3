"""Tiny float64 models and dense-Hessian references for the numerical tests.

The references here are deliberately independent of ``gif.params`` and ``gif.hvp``: they unflatten
θ by hand and form the Hessian with ``torch.autograd.functional.hessian`` (reverse-over-reverse on
the whole batch), so a bug in the engine cannot cancel against the same bug in its check.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DTYPE = torch.float64

# The CI machine has 2 cores shared by several test runs: keep each one on a single thread.
torch.set_num_threads(1)


def tiny_mlp(in_features: int = 4, hidden: int = 6, classes: int = 3, seed: int = 0) -> nn.Module:
    """Linear–Tanh–Linear: smooth, so its Hessian is generic (no ReLU kinks at the test points)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, classes)).to(
        DTYPE
    )


class TinyBatchNormCNN(nn.Module):
    """Conv → BatchNorm → Tanh → Linear on 1×6×6 inputs; BatchNorm has non-trivial running stats."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 3 * 3, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.norm(self.conv(x))).flatten(1))


def tiny_cnn(classes: int = 3, seed: int = 0) -> TinyBatchNormCNN:
    torch.manual_seed(seed)
    model = TinyBatchNormCNN(classes).to(DTYPE)
    with torch.no_grad():
        model.norm.running_mean.copy_(torch.tensor([0.3, -0.2], dtype=DTYPE))
        model.norm.running_var.copy_(torch.tensor([1.7, 0.6], dtype=DTYPE))
        model.norm.weight.copy_(torch.tensor([1.2, 0.8], dtype=DTYPE))
        model.norm.bias.copy_(torch.tensor([0.1, -0.3], dtype=DTYPE))
    return model


def classification_data(n: int, shape: tuple[int, ...], classes: int = 3, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=generator, dtype=DTYPE)
    y = torch.randint(0, classes, (n,), generator=generator)
    return x, y


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])


def loss_of_flat(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "cross_entropy"):
    """θ ↦ mean loss, with θ split by hand and the model in eval mode (the reference function)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for p in model.parameters() if p.requires_grad]
    buffers = dict(model.named_buffers())

    def function(theta: torch.Tensor) -> torch.Tensor:
        tensors, start = dict(buffers), 0
        for name, shape in zip(names, shapes, strict=True):
            count = shape.numel()
            tensors[name] = theta[start : start + count].reshape(shape)
            start += count
        was_training = model.training
        model.eval()
        try:
            out = torch.func.functional_call(model, tensors, (x,))
        finally:
            model.train(was_training)
        if loss == "cross_entropy":
            return F.cross_entropy(out, y)
        return ((out - y.reshape(out.shape)) ** 2).reshape(len(x), -1).sum(1).mean()

    return function


def dense_hessian(model, x, y, loss: str = "cross_entropy") -> torch.Tensor:
    """The p × p Hessian of the mean loss at the model's parameters, formed densely."""
    return torch.autograd.functional.hessian(loss_of_flat(model, x, y, loss), flat_params(model))


def dense_grad(model, x, y, loss: str = "cross_entropy") -> torch.Tensor:
    theta = flat_params(model).requires_grad_(True)
    (gradient,) = torch.autograd.grad(loss_of_flat(model, x, y, loss)(theta), theta)
    return gradient


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(actual - expected) / torch.linalg.vector_norm(expected))
