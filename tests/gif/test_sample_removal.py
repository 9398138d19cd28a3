"""method.md E9, sample removal: the objective rewards the forgotten points looking like data the
model never trained on (``H(validation accuracy, 1 − KS(forgotten losses, non-member losses))``),
not like wrong data.

The toy: an over-parameterised logistic regression (100 features, 200 noisy points) fits its
training set, so the 20 forgotten points are memorised (loss ≈ 0); retraining without them is
computed exactly here (L-BFGS to convergence), so the right answer is known. Along the segment
``θ(α) = θ̂ + α (θ_retrained − θ̂)`` the sample-removal objective must prefer the retrained model
(α ≈ 1), where the class-removal objective (forget accuracy → 0) over-forgets (α ≥ 4), and the
documented fallback (no holdout: compare with retained validation points, which are members)
keeps the model nearly as it is.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gif.edit.measure import sample_removal_objective, step_objective
from gif.edit.plan import EditData
from gif.step import search_scale

D, N, FORGET = 100, 200, 20
GRID = [2.0**k for k in range(-6, 7)]


def _fit(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L-BFGS to convergence on the (lightly L2-regularised) mean cross-entropy → flat θ."""
    torch.manual_seed(0)
    model = nn.Linear(D, 2).double()
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=300,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y) + 1e-3 * sum((p**2).sum() for p in model.parameters())
        loss.backward()
        return loss

    optimizer.step(closure)
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.fixture(scope="module")
def toy():
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(D, generator=generator, dtype=torch.float64)

    def draw(count: int):
        x = torch.randn(count, D, generator=generator, dtype=torch.float64)
        noise = 3 * torch.randn(count, generator=generator, dtype=torch.float64)
        return x, ((x @ teacher + noise) > 0).long()

    x, y = draw(N)
    holdout_x, holdout_y = draw(1000)  # non-members from the same distribution
    keep = torch.arange(FORGET, N)
    theta, retrained = _fit(x, y), _fit(x[keep], y[keep])
    empty = torch.empty(0)
    data = EditData(u_x=x[:FORGET], u_y=y[:FORGET], u_new_y=None, h_x=empty, h_y=empty,
                    val_x=x[keep[:100]], val_y=y[keep[:100]], forget_x=empty, forget_y=empty,
                    forget_new_y=None, retain_x=empty, retain_y=empty,
                    holdout_x=holdout_x, holdout_y=holdout_y)
    model = nn.Linear(D, 2).double()

    def at(alpha: float) -> nn.Module:
        flat = theta + alpha * (retrained - theta)
        with torch.no_grad():
            model.weight.copy_(flat[: 2 * D].reshape(2, D))
            model.bias.copy_(flat[2 * D:])
        return model

    return data, at


def test_sample_removal_objective_prefers_the_retrained_model(toy):
    data, at = toy
    before, retrained = sample_removal_objective(data)(at(0.0)), sample_removal_objective(data)(
        at(1.0))
    assert before["forget_accuracy"] == 1.0  # memorised
    assert retrained["loss_ks"] < before["loss_ks"] / 2  # retrained: they look unseen
    chosen = search_scale(at, sample_removal_objective(data), GRID)
    assert 0.5 <= chosen.scale <= 2.0
    assert chosen.best.objective >= retrained["objective"] - 1e-12
    over = search_scale(at, step_objective("remove_class", data, num_classes=2), GRID)
    assert over.scale >= 4.0  # the class-removal objective over-forgets
    assert over.best.components["forget_accuracy"] < retrained["forget_accuracy"] - 0.3


def test_without_a_holdout_the_fallback_compares_with_the_validation_split(toy):
    data, at = toy
    fallback = dataclasses.replace(data, holdout_x=None, holdout_y=None)
    objective = sample_removal_objective(fallback)
    # The validation points are members too: the memorised forgotten points already look like
    # them, so the fallback keeps the model close to the original.
    assert objective(at(0.0))["loss_ks"] < sample_removal_objective(data)(at(0.0))["loss_ks"]
    assert search_scale(at, objective, GRID).scale <= 0.25
