"""method.md check 5: the paper's toy, where the loss is exactly quadratic.

A linear regression ``y ≈ w·x + c`` (5 weights and a bias, squared loss) is fitted exactly; then a
block of heterogeneous points is removed and only the first two weights may move. Because the
retained loss is quadratic, each method's defining property holds exactly:

- FIF reaches the minimum of the retained loss over the two weights with the rest fixed (E4);
- PIF equals the two weights' values in the full refit on the retained data (E5);
- GIF gives the smallest full gradient of the retained loss among all updates of the two
  weights (E3).

Every reference is computed without the engine's HVPs: least squares on the data, autograd for
gradients.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gif.hvp import make_hvp, mean_loss_grad
from gif.methods import removal_rhs, solve_edit
from gif.request import Solver
from tests.gif.helpers import DTYPE, dense_grad, relative_error

N, M = 240, 40  # all points, removed block
MOVABLE = torch.tensor([0, 1])  # flat indices of weight[0, 0] and weight[0, 1]


def _toy_data():
    """Correlated features; the removed block follows a different linear law and sits elsewhere."""
    generator = torch.Generator().manual_seed(0)
    mixing = torch.eye(5, dtype=DTYPE) + 0.6 * torch.randn(5, 5, generator=generator, dtype=DTYPE)
    x = torch.randn(N, 5, generator=generator, dtype=DTYPE) @ mixing
    true_w = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0], dtype=DTYPE)
    y = x @ true_w + 0.5 + 0.1 * torch.randn(N, generator=generator, dtype=DTYPE)
    block_w = torch.tensor([-1.0, 1.5, 2.0, 0.0, 1.0], dtype=DTYPE)
    x[:M] += 1.5
    y[:M] = x[:M] @ block_w - 2.0 + 0.1 * torch.randn(M, generator=generator, dtype=DTYPE)
    return x, y


def _least_squares(features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.linalg.lstsq(features, targets.unsqueeze(1)).solution.squeeze(1)


def _with_bias(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(len(x), 1, dtype=DTYPE)], dim=1)


@pytest.fixture(scope="module")
def toy():
    x, y = _toy_data()
    theta_hat = _least_squares(_with_bias(x), y)  # the exact optimum on all of D
    model = nn.Linear(5, 1).to(DTYPE)
    with torch.no_grad():
        model.weight.copy_(theta_hat[:5].unsqueeze(0))
        model.bias.copy_(theta_hat[5:])
    keep_x, keep_y = x[M:], y[M:]
    b = removal_rhs(mean_loss_grad(model, x[:M], y[:M], loss="mse"), M, N)
    hvp = make_hvp(model, keep_x, keep_y, loss="mse")
    return {"model": model, "theta": theta_hat, "x": keep_x, "y": keep_y, "b": b, "hvp": hvp}


def _update(toy, method: str, algorithm: str = "lsqr") -> torch.Tensor:
    """The two movable weights after the edit with α = 1."""
    config = Solver(algorithm=algorithm, tol=1e-13, max_iter=200)
    solution = solve_edit(method, toy["hvp"], toy["b"], MOVABLE, solver_cfg=config)
    assert torch.equal(solution.indices, MOVABLE)
    return toy["theta"][MOVABLE] + solution.delta


def _retained_gradient(toy, movable_weights: torch.Tensor) -> torch.Tensor:
    """The full gradient (all 6 parameters) of the retained loss, by autograd on the data."""
    moved = nn.Linear(5, 1).to(DTYPE)
    theta = toy["theta"].clone()
    theta[MOVABLE] = movable_weights
    with torch.no_grad():
        moved.weight.copy_(theta[:5].unsqueeze(0))
        moved.bias.copy_(theta[5:])
    return dense_grad(moved, toy["x"], toy["y"], loss="mse")


def test_b_is_the_retained_gradient_at_the_exact_optimum(toy):
    """E1 holds exactly here: ∇R_{D∖U}(θ̂) = −ε ∇mean_U L(θ̂) since ∇R_D(θ̂) = 0."""
    assert relative_error(toy["b"], _retained_gradient(toy, toy["theta"][MOVABLE])) < 1e-9


@pytest.mark.parametrize("algorithm", ["lsqr", "cg"])
def test_fif_minimises_the_retained_loss_over_the_two_weights(toy, algorithm):
    fixed = toy["theta"][2:5]
    residual_target = toy["y"] - toy["x"][:, 2:] @ fixed - toy["theta"][5]
    expected = _least_squares(toy["x"][:, :2], residual_target)
    assert relative_error(_update(toy, "fif", algorithm), expected) < 1e-8


@pytest.mark.parametrize("algorithm", ["lsqr", "cg"])
def test_pif_equals_the_full_refit_of_the_two_weights(toy, algorithm):
    refit = _least_squares(_with_bias(toy["x"]), toy["y"])
    assert relative_error(_update(toy, "pif", algorithm), refit[MOVABLE]) < 1e-8


@pytest.mark.parametrize("algorithm", ["lsqr", "cg"])
def test_gif_gives_the_smallest_full_gradient(toy, algorithm):
    start = toy["theta"][MOVABLE]
    # The retained gradient is affine in the two weights: recover it from autograd and minimise
    # its norm in closed form.
    base = _retained_gradient(toy, start)
    basis = torch.eye(2, dtype=DTYPE)
    jacobian = torch.stack([_retained_gradient(toy, start + e) - base for e in basis], dim=1)
    best = start + _least_squares(jacobian, -base)
    gif = _update(toy, "gif", algorithm)
    assert relative_error(gif, best) < 1e-8

    def gradient_norm(weights):
        return float(_retained_gradient(toy, weights).norm())

    smallest = gradient_norm(gif)
    assert smallest < gradient_norm(_update(toy, "fif"))
    assert smallest < gradient_norm(_update(toy, "pif"))
    assert smallest < gradient_norm(start)
    generator = torch.Generator().manual_seed(1)
    for scale in (1e-3, 1e-1, 1.0):
        for _ in range(10):
            other = gif + scale * torch.randn(2, generator=generator, dtype=DTYPE)
            assert smallest < gradient_norm(other)


def test_the_three_methods_really_differ_here(toy):
    """The toy is informative only if the methods disagree (correlated, heterogeneous data)."""
    gif, fif, pif = (_update(toy, method) for method in ("gif", "fif", "pif"))
    assert relative_error(gif, fif) > 1e-2
    assert relative_error(gif, pif) > 1e-2
    assert relative_error(fif, pif) > 1e-2
