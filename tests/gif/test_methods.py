"""E1–E5 through the real HVPs of tiny float64 networks, against dense closed forms.

method.md checks 1 (each method equals its closed form, with LSQR and, for the symmetric systems,
MINRES), 2 (LSQR and the Neumann series agree, LSQR with several times fewer HVPs), 3 (GIF with
S = all is IF; GIF is scale invariant, damped or not) and 6 (float32, a singular Hessian: the
minimum-norm solution from a tolerance that cannot be reached; no false divergence).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gif.errors import Cancelled, InvalidRequest, SolverDiverged
from gif.hvp import make_hvp, mean_loss_grad
from gif.methods import check_solver, method_operator, relabel_rhs, removal_rhs, solve_edit
from gif.params import ParamSpace, apply_update
from gif.registry import build_model
from gif.request import Solver
from gif.solvers import solve
from gif.spec import ModelSpec
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
COLUMNS = EXACT.model_copy(update={"preconditioner": "columns", "preconditioner_probes": 16})


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


@pytest.mark.parametrize(
    ("method", "algorithm"),
    [("gif", "lsqr"), ("fif", "lsqr"), ("pif", "lsqr"), ("if", "lsqr"),
     ("fif", "minres"), ("pif", "minres"), ("if", "minres")],
)
@pytest.mark.parametrize("name", list(MODELS))
def test_each_method_equals_its_closed_form(name, method, algorithm):
    model, x, y, b, selected = _removal_problem(name)
    hessian = dense_hessian(model, x, y)
    hvp = make_hvp(model, x, y, batch_size=16)
    config = EXACT.model_copy(update={"algorithm": algorithm})
    solution = solve_edit(method, hvp, b, selected, solver_cfg=config)
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


@pytest.mark.parametrize("config", [EXACT, COLUMNS.model_copy(update={"max_iter": 5})],
                         ids=["exact", "column-scaled, 5 iterations"])
def test_gif_is_invariant_to_scaling_the_loss(config):
    """Prop. 1 i, also for an early iterate of a column-scaled solve (what the path uses): the
    norms scale with the loss and D against it."""
    model, x, y, _, selected = _removal_problem("cnn_batchnorm")
    forget_x, forget_y = classification_data(8, (1, 6, 6), seed=9)
    results = []
    for scale in (1.0, 25.0):

        def loss(out, target, scale=scale):
            return scale * F.cross_entropy(out, target)

        b = removal_rhs(mean_loss_grad(model, forget_x, forget_y, loss=loss), 8, 40)
        hvp = make_hvp(model, x, y, loss=loss)
        results.append((b, solve_edit("gif", hvp, b, selected, solver_cfg=config,
                                      seed=3).delta))
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


def test_minres_needs_fewer_hvps_than_lsqr_for_the_same_pif_update():
    model, x, y, b, selected = _removal_problem("cnn_batchnorm")
    hvp = make_hvp(model, x, y)
    config = Solver(tol=1e-10, max_iter=2000)
    krylov = solve_edit("pif", hvp, b, selected, solver_cfg=config)
    short = solve_edit(
        "pif", hvp, b, selected, solver_cfg=config.model_copy(update={"algorithm": "minres"})
    )
    assert krylov.result.converged and short.result.converged
    assert relative_error(short.delta, krylov.delta) < 1e-6
    assert short.result.hvps < 0.75 * krylov.result.hvps


def test_minres_for_gif_or_with_damping_is_an_invalid_request_naming_the_field():
    model, x, y, b, selected = _removal_problem("mlp")
    hvp = make_hvp(model, x, y)
    with pytest.raises(InvalidRequest) as caught:
        solve_edit("gif", hvp, b, selected, solver_cfg=Solver(algorithm="minres"))
    assert caught.value.loc == ("solver", "algorithm") and "rectangular" in caught.value.message
    with pytest.raises(InvalidRequest) as caught:
        solve_edit("pif", hvp, b, selected, solver_cfg=Solver(algorithm="minres", damping=0.1))
    assert caught.value.loc == ("solver", "damping")
    assert hvp.calls == 0  # refused before any work
    check_solver("fif", Solver(algorithm="minres"))  # the symmetric methods take it
    check_solver("gif", Solver(algorithm="lsqr", damping=0.1))


@pytest.mark.parametrize("algorithm", ["lsqr", "cg", "minres", "neumann"])
def test_a_zero_rhs_is_a_zero_update_without_any_hvp(algorithm):
    model, x, y, b, selected = _removal_problem("mlp")
    hvp = make_hvp(model, x, y)
    method = "gif" if algorithm != "minres" else "pif"
    solution = solve_edit(
        method, hvp, torch.zeros_like(b), selected, solver_cfg=Solver(algorithm=algorithm)
    )
    assert solution.result.stop_reason == "zero_rhs" and solution.result.converged
    assert hvp.calls == 0 and solution.result.hvps == 0
    assert torch.count_nonzero(solution.delta) == 0 and solution.delta.numel() == selected.numel()


def test_the_seed_reaches_the_power_iteration():
    model, x, y, b, selected = _removal_problem("mlp")
    hvp = make_hvp(model, x, y)
    config = Solver(algorithm="neumann", tol=1e-3, max_iter=5000)

    def sigma(seed):
        return solve_edit("gif", hvp, b, selected, solver_cfg=config, seed=seed).result.extra[
            "lambda_max_estimate"
        ]

    assert sigma(3) == sigma(3) != sigma(4)


def _linear_softmax_problem(seed: int = 0):
    """method.md check 6: a linear softmax classifier (``linear`` arch, cross-entropy), trained in
    float64. Its Hessian is singular: shifting every class's weights and bias alike changes no
    prediction. Returns the float64 model, retained data, removal rhs and dense Hessian."""
    torch.manual_seed(seed)
    model = build_model(ModelSpec(arch="linear", arch_kwargs={"in_features": 5, "num_classes": 3}))
    model = model.double()
    x, y = classification_data(200, (5,), seed=seed + 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(200):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    m = 20
    b = removal_rhs(mean_loss_grad(model, x[:m], y[:m]), m, len(y))
    keep_x, keep_y = x[m:], y[m:]
    return model, keep_x, keep_y, b, dense_hessian(model, keep_x, keep_y)


@pytest.mark.parametrize(
    ("method", "algorithm", "half"),
    [("gif", "lsqr", False), ("gif", "lsqr", True), ("if", "lsqr", False),
     ("pif", "lsqr", True), ("if", "minres", False), ("fif", "minres", True)],
)
def test_float32_on_a_singular_hessian_gives_the_minimum_norm_solution(method, algorithm, half):
    """method.md check 6: asked for a tolerance float32 cannot reach (1e-12, 1000 iterations), the
    solve still returns the minimum-norm solution (float64 pseudo-inverse) and says why it
    stopped. Before the E8 stopping rules, LSQR ran all 1000 iterations here and drifted along
    the null space to a solution ~18x too far off."""
    model, x, y, b, hessian = _linear_softmax_problem()
    p = b.numel()
    assert int(torch.linalg.matrix_rank(hessian)) < p  # singular, as the check needs
    selected = torch.randperm(p, generator=torch.Generator().manual_seed(7))[: p // 2].sort().values
    if not half:
        selected = torch.arange(p)
    expected = _closed_form(method, hessian, b, selected)
    config = Solver(algorithm=algorithm, tol=1e-12, max_iter=1000)
    solution = solve_edit(method, make_hvp(model.float(), x.float(), y), b.float(), selected,
                          solver_cfg=config)
    result = solution.result
    assert solution.delta.dtype == torch.float32
    assert relative_error(solution.delta.double(), expected) <= 1e-3
    assert result.stop_reason in ("stagnation", "condition_limit") and not result.converged
    assert result.iterations < 1000


def test_float32_neumann_on_a_singular_hessian_never_reports_false_divergence():
    """method.md check 6, second half, through the real HVPs: thousands of float32 iterations at
    the engine's σ stay at the solution; rounding noise is no divergence."""
    model, x, y, b, hessian = _linear_softmax_problem(seed=1)
    selected = torch.arange(b.numel())
    expected = _closed_form("gif", hessian, b, selected)
    hvp = make_hvp(model.float(), x.float(), y)
    long = Solver(algorithm="neumann", tol=1e-12, max_iter=3000, stagnation_window=0)
    try:
        solution = solve_edit("gif", hvp, b.float(), selected, solver_cfg=long)
    except SolverDiverged as error:  # pragma: no cover - the failure this test guards against
        pytest.fail(f"rounding noise reported as divergence: {error}")
    assert solution.result.stop_reason == "max_iter"
    assert relative_error(solution.delta.double(), expected) <= 1e-3
    stopping = solve_edit("gif", hvp, b.float(), selected,
                          solver_cfg=long.model_copy(update={"stagnation_window": 5}))
    assert stopping.result.stop_reason == "stagnation"
    assert stopping.result.iterations < 3000
    assert relative_error(stopping.delta.double(), expected) <= 1e-3


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


# --- Through the edit (gif.edit.update): a zero right-hand side, cancel in the gradient build --

LINEAR = ModelSpec(arch="linear", arch_kwargs={"in_features": 4, "num_classes": 3})


def _saturated_edit():
    """A linear classifier that fits class 2 with a logit margin of 400: in float32 its softmax
    is exactly one-hot there, so the gradient of every class-2 point, and E1's b for removing
    the class, is exactly zero."""
    from gif.data import ArrayDataset
    from gif.edit import LoadedModel

    generator = torch.Generator().manual_seed(3)
    y = torch.arange(60) % 3
    x = 0.3 * torch.randn(60, 4, generator=generator)
    x[y == 2] = torch.tensor([0.0, 0.0, 1.0, 0.0])
    weight = torch.zeros(3, 4)
    weight[0, 0] = weight[1, 1] = 1.0
    weight[2, 2] = 400.0
    state = {"weight": weight, "bias": torch.zeros(3)}
    return LoadedModel(LINEAR, state), ArrayDataset(x=x.float(), y=y.long())


def test_an_edit_with_an_exactly_zero_rhs_proceeds_with_a_zero_update():
    from gif.edit import run_edit
    from gif.request import EditRequest

    model, train = _saturated_edit()
    request = EditRequest.model_validate(
        {"edit": {"kind": "remove_class", "class": 2}, "step": {"mode": "fixed"}}
    )
    outcome = run_edit(request, model, train, {})
    solver = outcome.result["solver"]
    assert solver["stop_reason"] == "zero_rhs" and solver["converged"]
    assert solver["hvps"] == 0 and solver["rhs_norm"] == 0.0
    for name, value in model.state_dict.items():
        assert torch.equal(outcome.state_dict[name], value)


def test_a_cancel_during_the_gradient_build_stops_the_edit():
    from gif.edit import EditHooks, run_edit
    from gif.request import EditRequest

    model, train = _saturated_edit()
    request = EditRequest.model_validate(
        {"edit": {"kind": "remove_class", "class": 0}, "solver": {"batch_size": 4},
         "step": {"mode": "fixed"}}
    )
    phases, polls_in_solve = [], []

    def should_cancel() -> bool:  # inside "solve", polls come from the gradient's micro-batches
        if "solve" in phases:
            polls_in_solve.append(1)
        return len(polls_in_solve) >= 2

    hooks = EditHooks(progress=lambda progress: phases.append(progress.phase),
                      should_cancel=should_cancel)
    with pytest.raises(Cancelled) as caught:
        run_edit(request, model, train, {}, hooks)
    assert caught.value.details["phase"] == "the loss gradient"
    assert caught.value.details["micro_batches_done"] == 1


# ----------------------------------------------------------------------------- preconditioner


@pytest.mark.parametrize("name", list(MODELS))
def test_a_column_scaled_gif_reaches_the_least_squares_optimum(name):
    """E3 with ``solver.preconditioner = columns``: the residual ‖H[:,S]δ + b‖ of the dense
    closed form (H[:,S] may be rank-deficient, so the scaled solve may pick another minimiser
    of the same residual), every HVP counted, the probes included."""
    model, x, y, b, selected = _removal_problem(name)
    hessian = dense_hessian(model, x, y)
    hvp = make_hvp(model, x, y, batch_size=16)
    solution = solve_edit("gif", hvp, b, selected, solver_cfg=COLUMNS, seed=3)
    columns = hessian[:, selected]
    optimum = torch.linalg.vector_norm(columns @ _closed_form("gif", hessian, b, selected) + b)
    reached = torch.linalg.vector_norm(columns @ solution.delta + b)
    assert solution.result.converged
    assert float(reached) <= float(optimum) * (1 + 1e-6) + 1e-12
    assert solution.result.extra["preconditioner"] == "columns"
    assert solution.result.extra["preconditioner_hvps"] == 16
    assert solution.result.hvps == hvp.calls


def test_the_column_scaled_iterates_differ_from_the_plain_ones():
    """The preconditioner changes the path's candidates (what it is for), not only their cost."""
    model, x, y, b, selected = _removal_problem("cnn_batchnorm")
    hvp = make_hvp(model, x, y)
    short = Solver(max_iter=3)
    plain = solve_edit("gif", hvp, b, selected, solver_cfg=short)
    scaled = solve_edit("gif", hvp, b, selected, seed=3,
                        solver_cfg=short.model_copy(update={"preconditioner": "columns"}))
    assert relative_error(scaled.delta, plain.delta) > 1e-3


def test_minres_with_a_preconditioner_is_an_invalid_request_naming_the_field():
    with pytest.raises(InvalidRequest) as caught:
        check_solver("fif", Solver(algorithm="minres", preconditioner="columns"))
    assert caught.value.loc == ("solver", "preconditioner")


def test_a_cancel_during_the_preconditioner_probes_stops_the_solve():
    model, x, y, b, selected = _removal_problem("mlp")
    hvp = make_hvp(model, x, y)
    polls = []

    def should_stop() -> bool:  # polled before each probe (the HVP itself polls nothing)
        polls.append(1)
        return len(polls) >= 2

    with pytest.raises(Cancelled) as caught:
        solve_edit("gif", hvp, b, selected, solver_cfg=COLUMNS, should_stop=should_stop)
    assert caught.value.details == {"phase": "preconditioner", "probe": 1}
    assert hvp.calls == 1


def test_layer_of_maps_flat_indices_to_their_parameter_tensor():
    from gif.methods import layer_of

    offsets = (0, 4, 10)  # three tensors: [0, 4), [4, 10), [10, ...)
    columns = torch.tensor([0, 3, 4, 9, 10, 15])
    assert layer_of(columns, offsets).tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("method", ["gif", "pif"])
def test_a_layer_scaled_solve_reaches_the_least_squares_optimum(method):
    """``preconditioner: layers`` on the real HVP of a small CNN (several tensors): the
    optimum residual of the closed form, each tensor's columns scaled alike."""
    model, x, y, b, selected = _removal_problem("cnn_batchnorm")
    hessian = dense_hessian(model, x, y)
    hvp = make_hvp(model, x, y, batch_size=16)
    config = COLUMNS.model_copy(update={"preconditioner": "layers"})
    solution = solve_edit(method, hvp, b, selected, solver_cfg=config, seed=3)
    assert solution.result.converged and solution.result.extra["preconditioner"] == "layers"
    if method == "gif":
        columns = hessian[:, selected]
        optimum = torch.linalg.vector_norm(columns @ _closed_form("gif", hessian, b, selected) + b)
        assert float(torch.linalg.vector_norm(columns @ solution.delta + b)) <= \
            float(optimum) * (1 + 1e-6) + 1e-12
    else:  # H is singular: the scaled solve may pick another minimiser of ‖Hδ + b‖
        full = solution.result.x  # pif's solve is over all of θ (E5); δ keeps S of it
        optimum = torch.linalg.vector_norm(hessian @ _closed_form("if", hessian, b, selected) + b)
        assert float(torch.linalg.vector_norm(hessian @ full + b)) <= \
            float(optimum) * (1 + 1e-6) + 1e-12
