"""E7, E8: LSQR, CGLS and the Neumann series on dense problems with closed-form answers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gif.errors import Cancelled, NonFinite, SolverDiverged
from gif.solvers import LinearOperator, cgls, lsqr, neumann, normal_lambda_max, solve
from tests.gif.helpers import DTYPE, relative_error

ALGORITHMS = ["lsqr", "cg", "neumann"]


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


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_cancel_stops_between_iterations(algorithm):
    matrix = _matrix(30, 10, condition=1e3, seed=10)
    rhs = _rhs(matrix, consistent=False, seed=10)
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
    assert operator.hvps == startup + 2 * 4  # nothing computed after the stop request


def test_neumann_detects_divergence_when_sigma_is_too_small():
    matrix = _matrix(20, 8, condition=10.0, seed=11)  # λ_max(AᵀA) = 1
    rhs = _rhs(matrix, consistent=False, seed=11)
    with pytest.raises(SolverDiverged) as caught:
        neumann(LinearOperator.from_matrix(matrix), rhs, sigma=0.6, tol=1e-10, max_iter=1000)
    details = caught.value.details
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


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_non_finite_operator_raises(algorithm):
    matrix = _matrix(10, 4, condition=10.0, seed=13)
    operator = LinearOperator(
        matrix.shape, lambda x: matrix @ x * float("nan"), lambda u: matrix.T @ u
    )
    with pytest.raises((NonFinite, SolverDiverged)):
        solve(algorithm, operator, _rhs(matrix, False, 13), tol=1e-6, max_iter=50)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_zero_rhs_is_solved_by_zero(algorithm):
    matrix = _matrix(10, 4, condition=10.0, seed=14)
    result = solve(algorithm, LinearOperator.from_matrix(matrix), torch.zeros(10, dtype=DTYPE))
    assert result.converged and result.iterations == 0
    assert torch.count_nonzero(result.x) == 0


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
