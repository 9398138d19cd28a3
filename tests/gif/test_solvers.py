"""E7, E8: LSQR, CGLS, MINRES and the Neumann series on dense problems with closed-form answers,
and the stopping rules (E8 "Stopping", method.md check 6 on dense float32 problems)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gif.errors import Cancelled, NonFinite, SolverDiverged
from gif.solvers import (
    COLUMN_FLOOR,
    NEUMANN_MARGIN,
    LinearOperator,
    cgls,
    column_norms,
    column_scaling,
    group_scaling,
    lsqr,
    minres,
    neumann,
    normal_lambda_max,
    scale_columns,
    solve,
)
from tests.gif.helpers import DTYPE, relative_error

ALGORITHMS = ["lsqr", "cg", "neumann"]  # least-squares solvers: any (rectangular) A
EVERY_ALGORITHM = [*ALGORITHMS, "minres"]


def _matrix(m: int, n: int, condition: float, seed: int) -> torch.Tensor:
    """A random m × n matrix with singular values spread geometrically over [1/condition, 1]."""
    generator = torch.Generator().manual_seed(seed)
    left, _ = torch.linalg.qr(torch.randn(m, n, generator=generator, dtype=DTYPE))
    right, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=DTYPE))
    singular = torch.logspace(0, -math.log10(condition), n, dtype=DTYPE)
    return left @ torch.diag(singular) @ right.T


def _rhs(matrix: torch.Tensor, consistent: bool, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed + 100)
    if consistent:
        return matrix @ torch.randn(matrix.shape[1], generator=generator, dtype=DTYPE)
    return torch.randn(matrix.shape[0], generator=generator, dtype=DTYPE)


def _symmetric(eigenvalues: torch.Tensor, seed: int) -> torch.Tensor:
    """A symmetric matrix with the given eigenvalues (a random orthogonal basis)."""
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(
        torch.randn(len(eigenvalues), len(eigenvalues), generator=generator, dtype=DTYPE)
    )
    matrix = basis @ torch.diag(eigenvalues.to(DTYPE)) @ basis.T
    return (matrix + matrix.T) / 2


def _indefinite(n: int, condition: float, seed: int) -> torch.Tensor:
    """Symmetric, eigenvalues of both signs with magnitudes over [1/condition, 1]."""
    magnitudes = torch.logspace(0, -math.log10(condition), n, dtype=DTYPE)
    signs = torch.tensor([(-1.0) ** i for i in range(n)], dtype=DTYPE)
    return _symmetric(magnitudes * signs, seed)


def _problem(algorithm: str, condition: float, seed: int):
    """A matrix the algorithm can take (square symmetric for MINRES) and an rhs."""
    if algorithm == "minres":
        matrix = _indefinite(12, condition, seed)
    else:
        matrix = _matrix(30, 10, condition, seed)
    return matrix, _rhs(matrix, consistent=False, seed=seed)


def _damped_solution(matrix: torch.Tensor, rhs: torch.Tensor, damp: float) -> torch.Tensor:
    """argmin ‖A x − r‖² + λ²‖x‖² = (AᵀA + λ²I)⁻¹ Aᵀ r."""
    normal = matrix.T @ matrix + damp**2 * torch.eye(matrix.shape[1], dtype=DTYPE)
    return torch.linalg.solve(normal, matrix.T @ rhs)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("consistent", [True, False])
def test_undamped_solution_equals_lstsq(algorithm, consistent):
    matrix = _matrix(40, 12, condition=5.0, seed=1)
    rhs = _rhs(matrix, consistent, seed=1)
    expected = torch.linalg.lstsq(matrix, rhs.unsqueeze(1)).solution.squeeze(1)
    result = solve(algorithm, LinearOperator.from_matrix(matrix), rhs, tol=1e-10, max_iter=5000)
    assert result.converged
    assert relative_error(result.x, expected) < 1e-7
    if consistent:
        assert result.residual < 1e-7
    else:
        assert result.residual > 0.1  # the system has no exact solution; the normal one does


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("consistent", [True, False])
def test_damped_solution_equals_closed_form(algorithm, consistent):
    matrix = _matrix(30, 10, condition=1e3, seed=2)
    rhs = _rhs(matrix, consistent, seed=2)
    expected = _damped_solution(matrix, rhs, damp=0.05)
    result = solve(
        algorithm, LinearOperator.from_matrix(matrix), rhs, damp=0.05, tol=1e-10, max_iter=20000
    )
    assert result.converged
    assert relative_error(result.x, expected) < 1e-7
    undamped = torch.linalg.lstsq(matrix, rhs.unsqueeze(1)).solution.squeeze(1)
    assert relative_error(result.x, undamped) > 1e-3  # the damping really acted


def test_underdetermined_lsqr_gives_the_minimum_norm_solution():
    generator = torch.Generator().manual_seed(3)
    matrix = torch.randn(6, 15, generator=generator, dtype=DTYPE)
    rhs = torch.randn(6, generator=generator, dtype=DTYPE)
    result = lsqr(LinearOperator.from_matrix(matrix), rhs, tol=1e-12, max_iter=200)
    assert relative_error(result.x, torch.linalg.pinv(matrix) @ rhs) < 1e-9


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("damp", [0.0, 0.1])
def test_reported_diagnostics_are_the_true_ones(algorithm, damp):
    matrix = _matrix(25, 8, condition=50.0, seed=4)
    rhs = _rhs(matrix, consistent=False, seed=4)
    seen = []
    result = solve(
        algorithm,
        LinearOperator.from_matrix(matrix),
        rhs,
        damp=damp,
        tol=1e-3,
        max_iter=5000,
        callback=seen.append,
    )
    misfit = matrix @ result.x - rhs
    gradient = matrix.T @ misfit + damp**2 * result.x
    assert result.residual == pytest.approx(float(misfit.norm() / rhs.norm()), rel=1e-8)
    assert result.normal_residual == pytest.approx(
        float(gradient.norm() / (matrix.T @ rhs).norm()), rel=1e-6
    )
    assert result.converged and result.normal_residual <= 1e-3
    assert result.iterations == len(result.history) == len(seen)
    assert [row["iteration"] for row in result.history] == list(range(1, result.iterations + 1))
    assert seen[-1]["normal_residual"] == result.normal_residual
    assert seen[0]["max_iter"] == 5000
    assert result.history[-1]["hvps"] == result.hvps
    # Two products per iteration, one to start; Neumann adds 2 per power iteration.
    expected_hvps = 2 * result.iterations + 1
    if algorithm == "neumann":
        expected_hvps += 2 * 10
        assert result.extra["sigma"] > 0
    assert result.hvps == expected_hvps


def test_lsqr_history_residuals_match_recomputation_at_every_iteration():
    matrix = _matrix(20, 6, condition=30.0, seed=5)
    rhs = _rhs(matrix, consistent=False, seed=5)
    iterates = []
    operator = LinearOperator.from_matrix(matrix)
    for k in range(1, 7):
        iterates.append(lsqr(operator, rhs, tol=1e-15, max_iter=k))
    for k, result in enumerate(iterates, start=1):
        assert result.iterations == k
        row = iterates[-1].history[k - 1]
        misfit = matrix @ result.x - rhs
        assert row["residual"] == pytest.approx(float(misfit.norm() / rhs.norm()), rel=1e-9)


def test_hvp_counts_follow_the_operator_costs():
    matrix = _matrix(20, 6, condition=10.0, seed=6)
    operator = LinearOperator(
        matrix.shape,
        lambda x: matrix @ x,
        lambda u: matrix.T @ u,
        hvps_per_matvec=2,
        hvps_per_rmatvec=3,
    )
    result = lsqr(operator, _rhs(matrix, False, 6), tol=1e-6, max_iter=100)
    assert result.hvps == operator.hvps == 3 + 5 * result.iterations


def test_cg_and_lsqr_agree_on_an_ill_conditioned_problem():
    matrix = _matrix(50, 20, condition=1e3, seed=7)
    rhs = _rhs(matrix, consistent=False, seed=7)
    a = lsqr(LinearOperator.from_matrix(matrix), rhs, tol=1e-10, max_iter=2000)
    b = cgls(LinearOperator.from_matrix(matrix), rhs, tol=1e-10, max_iter=2000)
    assert a.converged and b.converged
    assert relative_error(a.x, b.x) < 1e-6


def test_lsqr_needs_several_times_fewer_products_than_neumann():
    matrix = _matrix(40, 15, condition=30.0, seed=8)
    rhs = _rhs(matrix, consistent=False, seed=8)
    fast = lsqr(LinearOperator.from_matrix(matrix), rhs, tol=1e-8, max_iter=5000)
    slow = neumann(LinearOperator.from_matrix(matrix), rhs, tol=1e-8, max_iter=50000)
    assert fast.converged and slow.converged
    assert relative_error(fast.x, slow.x) < 1e-6
    assert slow.hvps > 5 * fast.hvps


def test_not_converging_within_max_iter_is_reported():
    matrix = _matrix(30, 10, condition=1e4, seed=9)
    rhs = _rhs(matrix, consistent=False, seed=9)
    for algorithm in ALGORITHMS:
        result = solve(algorithm, LinearOperator.from_matrix(matrix), rhs, tol=1e-12, max_iter=3)
        assert not result.converged
        assert result.stop_reason == "max_iter"
        assert result.iterations == 3
        assert result.normal_residual > 1e-12


@pytest.mark.parametrize("algorithm", EVERY_ALGORITHM)
def test_cancel_stops_between_iterations(algorithm):
    matrix, rhs = _problem(algorithm, condition=1e3, seed=10)
    seen = []
    operator = LinearOperator.from_matrix(matrix)
    with pytest.raises(Cancelled) as caught:
        solve(
            algorithm,
            operator,
            rhs,
            tol=1e-12,
            max_iter=1000,
            callback=seen.append,
            should_stop=lambda: len(seen) >= 4,
        )
    assert len(seen) == 4
    assert caught.value.details["iteration"] == 4
    startup = 1 + (20 if algorithm == "neumann" else 0)
    per_iteration = 1 if algorithm == "minres" else 2
    assert operator.hvps == startup + per_iteration * 4  # nothing computed after the stop


def test_neumann_detects_divergence_when_sigma_is_too_small():
    matrix = _matrix(20, 8, condition=10.0, seed=11)  # λ_max(AᵀA) = 1
    rhs = _rhs(matrix, consistent=False, seed=11)
    with pytest.raises(SolverDiverged) as caught:
        neumann(LinearOperator.from_matrix(matrix), rhs, sigma=0.6, tol=1e-10, max_iter=1000)
    details = caught.value.details
    assert details["stop_reason"] == "diverged"
    assert details["sigma"] == pytest.approx(0.6)
    assert details["iteration"] < 100
    assert json.dumps(details)
    # With σ² just above λ_max / 2 the same series converges.
    ok = neumann(LinearOperator.from_matrix(matrix), rhs, sigma=0.75, tol=1e-8, max_iter=5000)
    assert ok.converged


def test_power_iteration_estimates_the_top_eigenvalue_from_below():
    matrix = _matrix(20, 8, condition=10.0, seed=12) * 3.0  # λ_max(AᵀA) = 9
    estimate = normal_lambda_max(LinearOperator.from_matrix(matrix), iterations=30, like=matrix)
    assert 8.0 < estimate <= 9.0 + 1e-9
    damped = normal_lambda_max(
        LinearOperator.from_matrix(matrix), damp=2.0, iterations=30, like=matrix
    )
    assert damped == pytest.approx(estimate + 4.0, rel=1e-6)


@pytest.mark.parametrize("algorithm", EVERY_ALGORITHM)
def test_non_finite_operator_raises(algorithm):
    matrix, rhs = _problem(algorithm, condition=10.0, seed=13)
    operator = LinearOperator(
        matrix.shape,
        lambda x: matrix @ x * float("nan"),
        lambda u: matrix.T @ u,
        symmetric=algorithm == "minres",
    )
    with pytest.raises((NonFinite, SolverDiverged)):
        solve(algorithm, operator, rhs, tol=1e-6, max_iter=50)


@pytest.mark.parametrize("algorithm", EVERY_ALGORITHM)
def test_zero_rhs_is_solved_by_zero_at_once(algorithm):
    matrix, rhs = _problem(algorithm, condition=10.0, seed=14)
    operator = LinearOperator.from_matrix(matrix)
    result = solve(algorithm, operator, torch.zeros_like(rhs), tol=1e-6)
    assert result.converged and result.stop_reason == "zero_rhs"
    assert result.iterations == 0 and result.hvps == operator.hvps == 0
    assert result.residual == 0.0 and result.normal_residual == 0.0
    assert torch.count_nonzero(result.x) == 0 and result.x.shape == (matrix.shape[1],)


@pytest.mark.parametrize("algorithm", EVERY_ALGORITHM)
def test_rhs_orthogonal_to_the_range_is_solved_by_zero(algorithm):
    """``Aᵀr = 0``: ``x = 0`` is the least-squares solution (its residual stays ‖r‖)."""
    matrix = torch.diag(torch.tensor([2.0, 1.0, 0.5, 0.0, 0.0], dtype=DTYPE))
    rhs = torch.tensor([0.0, 0.0, 0.0, 0.6, -0.8], dtype=DTYPE)  # in the null space, exactly
    result = solve(algorithm, LinearOperator.from_matrix(matrix), rhs, tol=1e-8)
    assert result.stop_reason == "rhs_orthogonal_to_range" and result.converged
    assert torch.count_nonzero(result.x) == 0 and result.residual == 1.0


def test_to_dict_is_json_and_omits_the_solution():
    matrix = _matrix(10, 4, condition=10.0, seed=15)
    rhs = _rhs(matrix, False, 15)
    result = neumann(LinearOperator.from_matrix(matrix), rhs, tol=1e-4, max_iter=5000)
    summary = json.loads(json.dumps(result.to_dict()))
    assert "x" not in summary
    assert summary["iterations"] == result.iterations
    assert summary["hvps"] == result.hvps
    assert summary["stop_reason"] == "tol_normal_residual"
    assert len(summary["history"]) == result.iterations
    assert summary["sigma"] == pytest.approx(result.extra["sigma"])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_callback_sees_each_iterate_and_can_stop_the_solve(algorithm):
    matrix = _matrix(30, 10, condition=1e3, seed=17)
    rhs = _rhs(matrix, consistent=False, seed=17)
    operator = LinearOperator.from_matrix(matrix)
    seen = []

    def keep(info):
        seen.append({**info, "x": info["x"].clone()})
        return info["iteration"] == 5

    result = solve(algorithm, operator, rhs, tol=1e-12, max_iter=1000, callback=keep)
    assert result.stop_reason == "callback" and not result.converged
    assert result.iterations == 5 and len(seen) == 5
    assert set(seen[0]) >= {"iteration", "residual", "normal_residual", "hvps", "max_iter", "x"}
    for info in seen:  # each iterate is the one whose residual the row reports
        misfit = matrix @ info["x"] - rhs
        assert info["residual"] == pytest.approx(float(misfit.norm() / rhs.norm()), rel=1e-8)
    assert torch.equal(seen[-1]["x"], result.x)
    assert result.hvps == operator.hvps  # nothing computed after the callback said stop


def test_a_callback_returning_none_or_false_does_not_stop():
    matrix = _matrix(30, 10, condition=10.0, seed=18)
    rhs = _rhs(matrix, consistent=False, seed=18)
    calls = []
    result = lsqr(
        LinearOperator.from_matrix(matrix),
        rhs,
        tol=1e-8,
        max_iter=1000,
        callback=lambda info: calls.append(1) or (False if len(calls) % 2 else None),
    )
    assert result.converged and result.stop_reason.startswith("tol_")
    assert len(calls) == result.iterations > 2


def test_bad_arguments_are_rejected():
    matrix = _matrix(10, 4, condition=10.0, seed=16)
    operator = LinearOperator.from_matrix(matrix)
    with pytest.raises(ValueError, match="unknown solver"):
        solve("gmres", operator, torch.ones(10, dtype=DTYPE))
    with pytest.raises(ValueError, match="rhs"):
        lsqr(operator, torch.ones(4, dtype=DTYPE))
    with pytest.raises(ValueError, match="tol"):
        lsqr(operator, torch.ones(10, dtype=DTYPE), tol=0.0)
    with pytest.raises(ValueError, match="stagnation_window"):
        lsqr(operator, torch.ones(10, dtype=DTYPE), stagnation_window=-1)
    with pytest.raises(ValueError, match="conlim"):
        lsqr(operator, torch.ones(10, dtype=DTYPE), conlim=-1.0)
    with pytest.raises(ValueError, match="not both"):
        cgls(operator, torch.ones(10, dtype=DTYPE), damp=0.1, relative_damp=0.1)
    with pytest.raises(ValueError, match="symmetric"):
        minres(operator, torch.ones(10, dtype=DTYPE))
    with pytest.raises(ValueError, match="symmetric"):
        LinearOperator((3, 4), lambda x: x, lambda u: u, symmetric=True)


# --- MINRES (E8): the symmetric systems of IF / PIF / FIF, one product per iteration --------


@pytest.mark.parametrize("definite", [True, False])
def test_minres_solves_a_symmetric_system(definite):
    matrix = _symmetric(torch.logspace(0, -2, 12), seed=20) if definite else _indefinite(
        12, condition=100.0, seed=20
    )
    rhs = _rhs(matrix, consistent=False, seed=20)
    operator = LinearOperator.from_matrix(matrix)
    result = minres(operator, rhs, tol=1e-12, max_iter=500)
    assert result.converged and result.stop_reason.startswith("tol_")
    assert relative_error(result.x, torch.linalg.solve(matrix, rhs)) < 1e-8
    assert result.hvps == operator.hvps == 1 + result.iterations  # one per iteration, one ahead
    assert result.extra["condition_estimate"] > 1.0


def test_minres_on_a_singular_consistent_system_gives_the_minimum_norm_solution():
    eigenvalues = torch.tensor([1.0, -0.7, 0.4, -0.2, 0.1, 0.0, 0.0, 0.0], dtype=DTYPE)
    matrix = _symmetric(eigenvalues, seed=21)
    rhs = matrix @ torch.randn(8, generator=torch.Generator().manual_seed(21), dtype=DTYPE)
    result = minres(LinearOperator.from_matrix(matrix), rhs, tol=1e-12, max_iter=100)
    assert result.converged
    assert relative_error(result.x, torch.linalg.pinv(matrix, hermitian=True) @ rhs) < 1e-9


def test_minres_reports_the_true_residuals_at_every_iteration():
    matrix = _indefinite(10, condition=30.0, seed=22)
    rhs = _rhs(matrix, consistent=False, seed=22)
    operator = LinearOperator.from_matrix(matrix)
    for k in range(1, 8):
        result = minres(operator, rhs, tol=1e-15, max_iter=k)
        assert result.iterations == k and result.stop_reason == "max_iter"
        misfit = matrix @ result.x - rhs
        assert result.residual == pytest.approx(float(misfit.norm() / rhs.norm()), rel=1e-9)
        assert result.normal_residual == pytest.approx(
            float((matrix @ misfit).norm() / (matrix @ rhs).norm()), rel=1e-8
        )


def test_minres_agrees_with_lsqr_at_half_the_products():
    matrix = _indefinite(40, condition=1e3, seed=23)
    rhs = _rhs(matrix, consistent=False, seed=23)
    short = minres(LinearOperator.from_matrix(matrix), rhs, tol=1e-10, max_iter=2000)
    long = lsqr(LinearOperator.from_matrix(matrix), rhs, tol=1e-10, max_iter=2000)
    assert short.converged and long.converged
    assert relative_error(short.x, long.x) < 1e-7
    assert short.hvps < 0.75 * long.hvps


def test_minres_refuses_damping():
    matrix = _indefinite(6, condition=10.0, seed=24)
    with pytest.raises(ValueError, match="lsqr"):
        minres(LinearOperator.from_matrix(matrix), torch.ones(6, dtype=DTYPE), damp=0.1)
    with pytest.raises(ValueError, match="lsqr"):
        minres(LinearOperator.from_matrix(matrix), torch.ones(6, dtype=DTYPE), relative_damp=0.1)


# --- Stopping (E8): every rule is named in stop_reason ---------------------------------------


def _float32_problem(condition: float, seed: int):
    """A well-conditioned float32 least-squares problem and its float64 solution."""
    matrix = _matrix(60, 20, condition=condition, seed=seed)
    rhs = _rhs(matrix, consistent=False, seed=seed)
    expected = torch.linalg.lstsq(matrix, rhs.unsqueeze(1)).solution.squeeze(1)
    return matrix.float(), rhs.float(), expected


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_an_unreachable_tolerance_in_float32_stops_for_stagnation(algorithm):
    matrix, rhs, expected = _float32_problem(condition=10.0, seed=25)
    result = solve(algorithm, LinearOperator.from_matrix(matrix), rhs, tol=1e-12, max_iter=5000)
    assert result.stop_reason == "stagnation" and not result.converged
    assert result.iterations < 5000
    assert relative_error(result.x.double(), expected) < 1e-4
    # The returned iterate is the last that made progress, with its own residuals.
    returned = result.extra["returned_iteration"]
    assert 0 < returned <= result.iterations - 5
    row = result.history[returned - 1]
    assert (result.residual, result.normal_residual) == (row["residual"], row["normal_residual"])
    misfit = matrix.double() @ result.x.double() - rhs.double()
    assert result.residual == pytest.approx(float(misfit.norm() / rhs.double().norm()), rel=1e-4)


def test_a_zero_stagnation_window_runs_to_max_iter():
    matrix, rhs, expected = _float32_problem(condition=10.0, seed=25)
    result = lsqr(
        LinearOperator.from_matrix(matrix), rhs, tol=1e-12, max_iter=300, stagnation_window=0
    )
    assert result.stop_reason == "max_iter" and result.iterations == 300


def test_float64_runs_past_float32_precision():
    """The precision is the dtype's: float64 reaches residuals float32 cannot."""
    matrix = _matrix(60, 20, condition=10.0, seed=25)
    rhs = _rhs(matrix, consistent=False, seed=25)
    result = lsqr(LinearOperator.from_matrix(matrix), rhs, tol=1e-13, max_iter=5000)
    assert result.stop_reason == "tol_normal_residual" and result.normal_residual <= 1e-13


def test_the_condition_estimate_stops_lsqr_at_conlim():
    matrix = _matrix(40, 20, condition=1e6, seed=26)
    rhs = _rhs(matrix, consistent=False, seed=26)
    operator = LinearOperator.from_matrix(matrix)
    limited = lsqr(operator, rhs, tol=1e-14, max_iter=2000, conlim=1e3)
    assert limited.stop_reason == "condition_limit" and not limited.converged
    assert limited.extra["condition_estimate"] >= 1e3
    # the estimate grows towards cond(A) = 1e6 and stays below it (a lower bound, up to √k)
    free = lsqr(operator, rhs, tol=1e-14, max_iter=2000, conlim=0.0)
    assert free.stop_reason != "condition_limit" and free.iterations > limited.iterations
    assert 1e3 < free.extra["condition_estimate"] < 1e6 * math.sqrt(free.iterations)


def test_the_condition_estimate_stops_minres_at_conlim():
    matrix = _indefinite(30, condition=1e6, seed=27)
    rhs = _rhs(matrix, consistent=False, seed=27)
    result = minres(LinearOperator.from_matrix(matrix), rhs, tol=1e-14, max_iter=500, conlim=1e3)
    assert result.stop_reason == "condition_limit"
    assert result.extra["condition_estimate"] >= 1e3


def test_the_residual_tolerance_is_named_when_it_decides():
    """An rhs mostly along a small eigenvalue: after one MINRES step the residual is below the
    tolerance while the normal residual, relative to the small ‖Ar‖, is far above it."""
    matrix = torch.diag(torch.tensor([1.0, 1e-3], dtype=DTYPE))
    rhs = torch.tensor([1e-3, 1.0], dtype=DTYPE)
    result = minres(LinearOperator.from_matrix(matrix), rhs, tol=0.75, max_iter=10)
    assert result.stop_reason == "tol_residual" and result.converged
    assert result.iterations == 1
    assert result.residual <= 0.75 < result.normal_residual


# --- The Neumann series (E7): σ, seeding, divergence vs rounding noise -----------------------


def test_neumann_sigma_is_the_spec_bound_with_the_measured_margin():
    matrix = _matrix(20, 8, condition=10.0, seed=28) * 3.0  # λ_max(AᵀA) = 9
    rhs = _rhs(matrix, consistent=False, seed=28)
    result = neumann(LinearOperator.from_matrix(matrix), rhs, tol=1e-8, max_iter=5000, seed=4)
    estimate = normal_lambda_max(LinearOperator.from_matrix(matrix), seed=4, like=rhs)
    assert result.extra["lambda_max_estimate"] == pytest.approx(estimate, rel=1e-12)
    assert result.extra["sigma"] ** 2 == pytest.approx(NEUMANN_MARGIN / 2 * estimate, rel=1e-12)
    assert 9.0 / result.extra["sigma"] ** 2 < 2.0  # E7's condition holds
    assert result.converged


def test_the_power_iteration_is_seeded():
    matrix = _matrix(30, 12, condition=3.0, seed=29)
    operator = LinearOperator.from_matrix(matrix)
    first, again, other = (
        normal_lambda_max(operator, iterations=3, seed=seed, like=matrix) for seed in (5, 5, 6)
    )
    assert first == again and first != other
    rhs = _rhs(matrix, consistent=False, seed=29)
    via_solve = solve("neumann", operator, rhs, tol=1e-6, max_iter=2000, seed=6)
    direct = neumann(operator, rhs, tol=1e-6, max_iter=2000, seed=6)
    assert via_solve.extra["sigma"] == direct.extra["sigma"]
    assert solve("lsqr", operator, rhs, seed=6).converged  # deterministic solvers ignore it


def test_the_power_iteration_checks_for_cancel_every_iteration():
    matrix = _matrix(30, 12, condition=3.0, seed=30)
    operator = LinearOperator.from_matrix(matrix)
    polls = []
    with pytest.raises(Cancelled) as caught:
        neumann(
            operator, _rhs(matrix, False, 30), power_iters=50,
            should_stop=lambda: polls.append(1) or len(polls) > 3,
        )
    assert caught.value.details == {"phase": "power_iteration", "iteration": 3}
    assert operator.hvps == 1 + 2 * 3  # Aᵀr, then three power iterations, then nothing


@pytest.mark.parametrize("seed", [0, 1])
def test_neumann_never_calls_float32_rounding_noise_divergence(seed):
    """method.md check 6 (second half). Before, σ² = 1.1 λ̂ and "3 rises in a row" raised
    SolverDiverged after 6,000–8,000 iterations on exactly these problems; the series had
    converged to its float32 floor long before."""
    matrix, rhs, expected = _float32_problem(condition=30.0, seed=seed)
    operator = LinearOperator.from_matrix(matrix)
    long = neumann(operator, rhs, tol=1e-12, max_iter=9000, stagnation_window=0)
    assert long.stop_reason == "max_iter" and long.iterations == 9000
    assert relative_error(long.x.double(), expected) < 1e-4
    stopping = neumann(operator, rhs, tol=1e-12, max_iter=9000)
    assert stopping.stop_reason == "stagnation"
    assert relative_error(stopping.x.double(), expected) < 1e-3


# --- Damping relative to the operator's scale (E8, Prop. 1 i) --------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_relative_damping_is_the_damping_times_the_gain_of_a_on_r(algorithm):
    matrix = _matrix(30, 10, condition=10.0, seed=31) * 7.0
    rhs = _rhs(matrix, consistent=False, seed=31)
    lam = 0.05 * float((matrix.T @ rhs).norm() / rhs.norm())
    result = solve(
        algorithm, LinearOperator.from_matrix(matrix), rhs, relative_damp=0.05, tol=1e-11,
        max_iter=20_000,
    )
    assert result.extra["damp"] == pytest.approx(lam, rel=1e-12)
    assert result.extra["damp_scale"] == pytest.approx(lam / 0.05, rel=1e-12)
    assert relative_error(result.x, _damped_solution(matrix, rhs, lam)) < 1e-7


@pytest.mark.parametrize("scale", [10.0, 1e-3])
def test_relative_damping_is_invariant_to_scaling_the_problem(scale):
    matrix = _matrix(30, 10, condition=1e3, seed=32)
    rhs = _rhs(matrix, consistent=False, seed=32)
    plain = lsqr(LinearOperator.from_matrix(matrix), rhs, relative_damp=1e-2, tol=1e-12)
    scaled = lsqr(
        LinearOperator.from_matrix(scale * matrix), scale * rhs, relative_damp=1e-2, tol=1e-12
    )
    assert relative_error(scaled.x, plain.x) < 1e-10
    absolute = lsqr(
        LinearOperator.from_matrix(scale * matrix), scale * rhs, damp=plain.extra["damp"],
        tol=1e-12,
    )
    assert relative_error(absolute.x, plain.x) > 1e-3  # what relative damping fixes


# ----------------------------------------------------------------------------- column scaling


def test_column_norms_estimate_the_true_column_norms():
    """Hutchinson: E[(Aᵀz)_j²] = ‖A[:,j]‖² for ±1 probes; the mean over many is close."""
    generator = torch.Generator().manual_seed(4)
    A = torch.randn(30, 8, generator=generator, dtype=DTYPE) * torch.logspace(-3, 3, 8,
                                                                                dtype=DTYPE)
    operator = LinearOperator.from_matrix(A)
    norms = column_norms(operator, probes=4000, seed=1, like=torch.zeros(1, dtype=DTYPE))
    assert torch.allclose(norms, A.norm(dim=0), rtol=0.05)
    assert operator.hvps == 4000  # one rmatvec per probe
    again = column_norms(LinearOperator.from_matrix(A), probes=4000, seed=1,
                         like=torch.zeros(1, dtype=DTYPE))
    assert torch.equal(norms, again)  # seeded


def test_column_scaling_floors_near_zero_columns_and_is_scale_invariant():
    norms = torch.tensor([1.0, 2.0, 0.0, 1e-9], dtype=DTYPE)
    scale = column_scaling(norms)
    rms = float(norms.square().mean().sqrt())
    assert scale[:2].tolist() == [1.0, 0.5]
    assert scale[2] == scale[3] == pytest.approx(1 / (COLUMN_FLOOR * rms))
    assert torch.allclose(column_scaling(7.0 * norms), scale / 7.0)
    assert torch.equal(column_scaling(torch.zeros(3, dtype=DTYPE)), torch.ones(3, dtype=DTYPE))


@pytest.mark.parametrize("algorithm", ["lsqr", "cg"])
def test_a_column_scaled_solve_reaches_the_same_least_squares_solution_faster(algorithm):
    """Right preconditioning keeps the minimiser (A has full column rank here) and, on columns
    of very different scales, cuts the iterations."""
    generator = torch.Generator().manual_seed(5)
    A = torch.randn(60, 12, generator=generator, dtype=DTYPE) * torch.logspace(-2, 2, 12,
                                                                                 dtype=DTYPE)
    rhs = torch.randn(60, generator=generator, dtype=DTYPE)
    exact = torch.linalg.lstsq(A, rhs.unsqueeze(1)).solution.squeeze(1)
    operator = LinearOperator.from_matrix(A)
    scale = column_scaling(column_norms(operator, probes=64, like=rhs))
    plain = solve(algorithm, LinearOperator.from_matrix(A), rhs, tol=1e-12, max_iter=500)
    scaled = solve(algorithm, scale_columns(operator, scale), rhs, tol=1e-12, max_iter=500)
    assert relative_error(scale * scaled.x, exact) < 1e-8
    assert relative_error(plain.x, exact) < 1e-6
    assert scaled.iterations < plain.iterations / 2
    assert scaled.hvps < plain.hvps / 2  # the scaled operator costs A's products, no more


def test_group_scaling_gives_each_group_unit_rms_norm_and_is_scale_invariant():
    norms = torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0], dtype=DTYPE)
    groups = torch.tensor([0, 0, 1, 1, 2])
    scale = group_scaling(norms, groups)
    assert torch.allclose(scale[:2], torch.full((2,), 1 / math.sqrt(5.0), dtype=DTYPE))
    assert torch.allclose(scale[2:4], torch.full((2,), 0.5, dtype=DTYPE))
    assert scale[4] == 1.0  # an all-zero group is left alone
    assert torch.allclose(group_scaling(4.0 * norms, groups)[:4], scale[:4] / 4.0)
