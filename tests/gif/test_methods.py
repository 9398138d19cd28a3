"""E1–E5 through the real HVPs of tiny float64 networks, against dense closed forms.

MATH.md checks 1 (each method equals its closed form), 2 (LSQR and the Neumann series agree,
LSQR with several times fewer HVPs) and 3 (GIF with S = all is IF; GIF is scale invariant).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gif.errors import Cancelled, InvalidRequest
from gif.hvp import make_hvp, mean_loss_grad
from gif.methods import method_operator, relabel_rhs, removal_rhs, solve_edit
from gif.params import ParamSpace, apply_update
from gif.request import Solver
from gif.solvers import solve
from tests.gif.helpers import (
    DTYPE,
    classification_data,
    dense_grad,
    dense_hessian,
    flat_params,
    relative_error,
    tiny_cnn,
    tiny_mlp,
)

MODELS = {"mlp": (tiny_mlp, (4,)), "cnn_batchnorm": (tiny_cnn, (1, 6, 6))}
EXACT = Solver(algorithm="lsqr", tol=1e-12, max_iter=3000)


def _removal_problem(name: str, n: int = 40, m: int = 8):
    """Model, retained data, the removal rhs b (E1) and a seeded selection S of a third of θ."""
    build, shape = MODELS[name]
    model = build()
    x, y = classification_data(n, shape)
    keep_x, keep_y, forget_x, forget_y = x[m:], y[m:], x[:m], y[:m]
    b = removal_rhs(mean_loss_grad(model, forget_x, forget_y), m, n)
    p = flat_params(model).numel()
    generator = torch.Generator().manual_seed(2)
    selected = torch.randperm(p, generator=generator)[: p // 3].sort().values
    return model, keep_x, keep_y, b, selected


def _closed_form(method: str, hessian: torch.Tensor, b: torch.Tensor, selected: torch.Tensor):
    """E2–E5 with dense linear algebra (pseudo-inverses: H of a softmax classifier is singular)."""
    if method == "gif":
        columns = hessian[:, selected]
        return torch.linalg.lstsq(columns, -b.unsqueeze(1)).solution.squeeze(1)
    if method == "fif":
        return -torch.linalg.pinv(hessian[selected][:, selected]) @ b[selected]
    full = -torch.linalg.pinv(hessian, hermitian=True) @ b
    return full if method == "if" else full[selected]


@pytest.mark.parametrize("method", ["gif", "fif", "pif", "if"])
@pytest.mark.parametrize("name", list(MODELS))
def test_each_method_equals_its_closed_form(name, method):
    model, x, y, b, selected = _removal_problem(name)
    hessian = dense_hessian(model, x, y)
    hvp = make_hvp(model, x, y, batch_size=16)
    solution = solve_edit(method, hvp, b, selected, solver_cfg=EXACT)
    assert solution.result.converged
    assert relative_error(solution.delta, _closed_form(method, hessian, b, selected)) <= 1e-4
    expected_indices = torch.arange(b.numel()) if method == "if" else selected
    assert torch.equal(solution.indices, expected_indices)
    assert solution.result.hvps == hvp.calls  # every product is accounted for


def test_gif_minimises_the_full_linearised_gradient():
    """E3's defining property: no other update of S gives a smaller ‖H[:,S]δ + b‖."""
    model, x, y, b, selected = _removal_problem("cnn_batchnorm")
    hessian = dense_hessian(model, x, y)
    hvp = make_hvp(model, x, y)
    gif = solve_edit("gif", hvp, b, selected, solver_cfg=EXACT).delta
    fif = solve_edit("fif", hvp, b, selected, solver_cfg=EXACT).delta
    pif = solve_edit("pif", hvp, b, selected, solver_cfg=EXACT).delta

    def norm(delta):
        return float((hessian[:, selected] @ delta + b).norm())

    assert norm(gif) < norm(fif) and norm(gif) < norm(pif)
    generator = torch.Generator().manual_seed(4)
    for _ in range(20):
        nudge = 1e-3 * torch.randn(gif.shape, generator=generator, dtype=DTYPE)
        assert norm(gif) < norm(gif + nudge)


def _dense_system(method: str, hessian: torch.Tensor, b: torch.Tensor, selected: torch.Tensor):
    """The (matrix, rhs) of ``min ‖matrix Δ − rhs‖`` for each method, formed densely."""
    if method == "gif":
        return hessian[:, selected], -b
    if method == "fif":
        return hessian[selected][:, selected], -b[selected]
    return hessian, -b


def _tikhonov(matrix: torch.Tensor, rhs: torch.Tensor, lam: float) -> torch.Tensor:
    normal = matrix.T @ matrix + lam**2 * torch.eye(matrix.shape[1], dtype=DTYPE)
    return torch.linalg.solve(normal, matrix.T @ rhs)


@pytest.mark.parametrize(("algorithm", "damping"), [("lsqr", 0.05), ("cg", 0.05), ("neumann", 0.3)])
@pytest.mark.parametrize("method", ["gif", "fif", "if"])
def test_damping_gives_the_tikhonov_solution_at_the_effective_lambda(method, algorithm, damping):
    """solver.damping is relative: λ = damping · ‖Aᵀr‖/‖r‖ (E8), and the solve is E8's damped one.

    (The Neumann series gets a larger damping: its iterations grow like 1/λ².)"""
    model, x, y, b, selected = _removal_problem("mlp")
    matrix, rhs = _dense_system(method, dense_hessian(model, x, y), b, selected)
    lam = damping * float((matrix.T @ rhs).norm() / rhs.norm())
    expected = _tikhonov(matrix, rhs, lam)
    config = Solver(algorithm=algorithm, tol=1e-11, max_iter=10_000, damping=damping)
    solution = solve_edit(method, make_hvp(model, x, y), b, selected, solver_cfg=config)
    assert solution.result.converged
    assert solution.result.extra["damp"] == pytest.approx(lam, rel=1e-10)
    assert relative_error(solution.delta, expected) <= 1e-6
    assert relative_error(solution.delta, _tikhonov(matrix, rhs, damping)) > 1e-3  # not absolute


@pytest.mark.parametrize("damping", [0.0, 1e-3, 1e-2])
@pytest.mark.parametrize("scale", [10.0, 1e-3])
def test_damped_gif_is_invariant_to_scaling_the_loss(scale, damping):
    """Prop. 1 i with damping: scaling the loss by c scales A and r by c, and λ with them."""
    model, x, y, _, selected = _removal_problem("cnn_batchnorm")
    forget_x, forget_y = classification_data(8, (1, 6, 6), seed=9)
    config = Solver(algorithm="lsqr", tol=1e-12, max_iter=3000, damping=damping)
    solutions = []
    for c in (1.0, scale):

        def loss(out, target, c=c):
            return c * F.cross_entropy(out, target)

        b = removal_rhs(mean_loss_grad(model, forget_x, forget_y, loss=loss), 8, 40)
        hvp = make_hvp(model, x, y, loss=loss)
        solutions.append((b, hvp, solve_edit("gif", hvp, b, selected, solver_cfg=config)))
    (_, _, plain), (b_scaled, hvp_scaled, scaled) = solutions
    assert relative_error(scaled.delta, plain.delta) <= 1e-6
    assert scaled.result.extra["damp"] == pytest.approx(scale * plain.result.extra["damp"])
    if damping > 0:  # the same λ, absolute, on the scaled problem: what the test guards against
        operator = method_operator("gif", hvp_scaled, selected, b_scaled.numel())
        absolute = solve(
            "lsqr", operator, -b_scaled, damp=plain.result.extra["damp"], tol=1e-12,
            max_iter=3000,
        )
        assert relative_error(absolute.x, plain.delta) > 1e-5


def test_lsqr_and_neumann_reach_the_same_gif_update():
    model, x, y, b, selected = _removal_problem("mlp")
    hvp = make_hvp(model, x, y, batch_size=64)
    krylov = solve_edit("gif", hvp, b, selected, solver_cfg=Solver(tol=1e-7, max_iter=1000))
    series = solve_edit(
        "gif", hvp, b, selected, solver_cfg=Solver(algorithm="neumann", tol=1e-7, max_iter=10_000)
    )
    cg = solve_edit("gif", hvp, b, selected, solver_cfg=Solver(algorithm="cg", tol=1e-7))
    assert krylov.result.converged and series.result.converged and cg.result.converged
    assert relative_error(series.delta, krylov.delta) < 1e-4
    assert relative_error(cg.delta, krylov.delta) < 1e-4
    assert series.result.hvps > 5 * krylov.result.hvps


def test_gif_with_every_parameter_selected_is_if():
    model, x, y, b, _ = _removal_problem("cnn_batchnorm")
    hvp = make_hvp(model, x, y)
    everything = torch.arange(b.numel())
    gif = solve_edit("gif", hvp, b, everything, solver_cfg=EXACT)
    classic = solve_edit("if", hvp, b, everything, solver_cfg=EXACT)
    assert relative_error(gif.delta, classic.delta) < 1e-6


def test_gif_is_invariant_to_scaling_the_loss():
    model, x, y, _, selected = _removal_problem("cnn_batchnorm")
    forget_x, forget_y = classification_data(8, (1, 6, 6), seed=9)
    results = []
    for scale in (1.0, 25.0):

        def loss(out, target, scale=scale):
            return scale * F.cross_entropy(out, target)

        b = removal_rhs(mean_loss_grad(model, forget_x, forget_y, loss=loss), 8, 40)
        hvp = make_hvp(model, x, y, loss=loss)
        results.append((b, solve_edit("gif", hvp, b, selected, solver_cfg=EXACT).delta))
    (b1, delta1), (b25, delta25) = results
    assert relative_error(b25, 25.0 * b1) < 1e-12  # the problem really was rescaled
    assert relative_error(delta25, delta1) < 1e-8


def test_removal_rhs_is_the_gradient_of_the_retained_loss_at_a_stationary_point():
    """E1: with ∇R_D = 0, ∇R_{D∖U} = −ε ∇mean_U L exactly (here: the identity for any θ)."""
    model, _, _, _, _ = _removal_problem("mlp")
    x, y = classification_data(40, (4,))
    m, n = 8, 40
    grad_all, grad_keep = dense_grad(model, x, y), dense_grad(model, x[m:], y[m:])
    b = removal_rhs(dense_grad(model, x[:m], y[:m]), m, n)
    # ∇R_{D∖U} = (N ∇R_D − m ∇R_U) / (N − m) = b + N/(N − m) ∇R_D
    assert relative_error(b + n / (n - m) * grad_all, grad_keep) < 1e-12


def test_relabel_rhs_is_the_change_of_the_mean_gradient():
    model = tiny_mlp()
    x, y = classification_data(30, (4,))
    edited = torch.tensor([2, 5, 11, 17])
    new_y = y.clone()
    new_y[edited] = (y[edited] + 1) % 3
    b = relabel_rhs(
        dense_grad(model, x[edited], new_y[edited]), dense_grad(model, x[edited], y[edited]), 4, 30
    )
    assert relative_error(b, dense_grad(model, x, new_y) - dense_grad(model, x, y)) < 1e-12


def test_rhs_rejects_impossible_counts():
    g = torch.ones(3, dtype=DTYPE)
    with pytest.raises(InvalidRequest):
        removal_rhs(g, 10, 10)
    with pytest.raises(InvalidRequest):
        relabel_rhs(g, g, 0, 10)


def test_applying_the_solution_moves_theta_by_alpha_delta():
    model, x, y, b, selected = _removal_problem("cnn_batchnorm")
    solution = solve_edit("pif", make_hvp(model, x, y), b, selected, solver_cfg=EXACT)
    space = ParamSpace.from_model(model)
    edited = apply_update(model.state_dict(), space, solution.indices, solution.delta, alpha=0.3)
    change = space.flatten(edited) - space.flatten(dict(model.named_parameters())).detach()
    assert torch.allclose(change[selected], 0.3 * solution.delta, atol=1e-15)
    unselected = torch.ones(b.numel(), dtype=torch.bool)
    unselected[selected] = False
    assert torch.count_nonzero(change[unselected]) == 0


def test_cancel_and_progress_reach_the_solver():
    model, x, y, b, selected = _removal_problem("mlp")
    hvp = make_hvp(model, x, y)
    seen = []
    with pytest.raises(Cancelled):
        solve_edit(
            "gif",
            hvp,
            b,
            selected,
            solver_cfg=EXACT,
            callback=seen.append,
            should_stop=lambda: len(seen) == 2,
        )
    assert [info["iteration"] for info in seen] == [1, 2]
    assert hvp.calls == 1 + 2 * 2


@pytest.mark.parametrize("method", ["gif", "fif", "pif", "if"])
def test_callback_gets_each_iterate_as_the_methods_update(method):
    model, x, y, b, selected = _removal_problem("mlp")
    hvp = make_hvp(model, x, y)
    seen = []

    def keep(info):
        seen.append((info["x"].clone(), info["delta"].clone()))
        return len(seen) == 3

    stopped = solve_edit(method, hvp, b, selected, solver_cfg=EXACT, callback=keep)
    assert stopped.result.stop_reason == "callback" and stopped.result.iterations == 3
    iterate, delta = seen[-1]
    assert torch.equal(delta, stopped.delta)
    assert torch.equal(delta, iterate[selected] if method == "pif" else iterate)
    expected_size = b.numel() if method == "if" else selected.numel()
    assert delta.numel() == stopped.indices.numel() == expected_size
    # The third iterate of a stopped solve is the answer of a solve capped at three iterations.
    capped = solve_edit(method, hvp, b, selected, solver_cfg=Solver(tol=1e-12, max_iter=3))
    assert relative_error(stopped.delta, capped.delta) < 1e-12


def test_empty_selection_is_an_invalid_request():
    model, x, y, b, _ = _removal_problem("mlp")
    with pytest.raises(InvalidRequest) as caught:
        solve_edit(
            "gif", make_hvp(model, x, y), b, torch.zeros(0, dtype=torch.long), solver_cfg=EXACT
        )
    assert caught.value.loc == ("selection", "ratio")


def test_float32_gif_is_close_to_the_float64_closed_form():
    model, x, y, b, selected = _removal_problem("cnn_batchnorm")
    expected = _closed_form("gif", dense_hessian(model, x, y), b, selected)
    model32 = model.float()
    config = Solver(algorithm="lsqr", tol=1e-5, max_iter=500)
    solution = solve_edit(
        "gif", make_hvp(model32, x.float(), y), b.float(), selected, solver_cfg=config
    )
    assert solution.delta.dtype == torch.float32
    assert relative_error(solution.delta.double(), expected) < 1e-3
