"""Least-squares solvers for ``min_x ‖A x − r‖² + λ²‖x‖²`` (MATH.md E7, E8).

Nothing here knows about networks: ``A`` is a ``LinearOperator`` (a matvec, a transposed matvec,
and how many HVPs each costs). Three algorithms:

- ``lsqr`` — Paige & Saunders (1982), Golub–Kahan bidiagonalisation with optional damping (E8).
- ``cgls`` — conjugate gradients on the normal equations ``(AᵀA + λ²I) x = Aᵀr`` (E8).
- ``neumann`` — the paper's scale-invariant series on the normal equations (E7), with σ found by
  power iteration and divergence detection.

Every solver reports, per iteration and at the end, the relative residual ``‖Ax − r‖/‖r‖`` and the
relative normal-equation residual ``‖Aᵀ(Ax − r) − λ²x‖/‖Aᵀr‖`` (with damping, the gradient of the
damped objective, which vanishes at its minimiser), counted HVPs (all of them, Neumann's power
iterations included) and wall time. Convergence: ``normal_residual ≤ tol`` (the systems are
least-squares problems, usually inconsistent) or ``residual ≤ tol``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gif.errors import Cancelled, NonFinite, SolverDiverged

Callback = Callable[[dict], "bool | None"]
"""``callback(info)`` once per iteration; returning ``True`` stops the solve (``"callback"``).

``info`` holds ``iteration``, ``residual``, ``normal_residual``, ``hvps``, ``max_iter`` and ``x``,
the current iterate: a tensor the solver owns, so a consumer that keeps it must clone it."""
ShouldStop = Callable[[], bool]


class LinearOperator:
    """``A`` of shape ``(m, n)`` given by ``matvec(x) = A x`` and ``rmatvec(u) = Aᵀ u``.

    ``hvps`` counts Hessian-vector products spent so far (``hvps_per_matvec`` per ``matvec``, ...).
    """

    def __init__(
        self,
        shape: tuple[int, int],
        matvec: Callable[[torch.Tensor], torch.Tensor],
        rmatvec: Callable[[torch.Tensor], torch.Tensor],
        *,
        hvps_per_matvec: int = 1,
        hvps_per_rmatvec: int = 1,
    ):
        self.shape = (int(shape[0]), int(shape[1]))
        self._matvec = matvec
        self._rmatvec = rmatvec
        self.hvps_per_matvec = hvps_per_matvec
        self.hvps_per_rmatvec = hvps_per_rmatvec
        self.hvps = 0

    @classmethod
    def from_matrix(cls, matrix: torch.Tensor) -> LinearOperator:
        """A dense matrix as an operator (one "HVP" per product; for tests and benchmarks)."""
        return cls(tuple(matrix.shape), lambda x: matrix @ x, lambda u: matrix.T @ u)

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        self.hvps += self.hvps_per_matvec
        return self._matvec(x)

    def rmatvec(self, u: torch.Tensor) -> torch.Tensor:
        self.hvps += self.hvps_per_rmatvec
        return self._rmatvec(u)


@dataclass
class SolveResult:
    """What a solve produced and how it got there (shaped like scipy's ``lsqr`` return)."""

    x: torch.Tensor
    iterations: int
    hvps: int
    residual: float
    normal_residual: float
    seconds: float
    converged: bool
    stop_reason: str
    algorithm: str = ""
    history: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-able summary (no ``x``): API.md's ``result.solver`` plus the history."""
        return {
            "algorithm": self.algorithm,
            "iterations": self.iterations,
            "hvps": self.hvps,
            "residual": _json_float(self.residual),
            "normal_residual": _json_float(self.normal_residual),
            "seconds": self.seconds,
            "converged": self.converged,
            "stop_reason": self.stop_reason,
            "history": [{k: _json_float(v) for k, v in row.items()} for row in self.history],
            **{k: _json_float(v) for k, v in self.extra.items()},
        }


def _json_float(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class _Monitor:
    """Shared bookkeeping: history, callback, cancellation, convergence test, the final result."""

    def __init__(self, algorithm, A, rhs, *, tol, max_iter, callback, should_stop):
        if not 0 < tol < 1:
            raise ValueError(f"tol must be in (0, 1), got {tol}")
        if max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}")
        if rhs.shape != (A.shape[0],):
            raise ValueError(f"rhs must have shape ({A.shape[0]},), got {tuple(rhs.shape)}")
        self.algorithm = algorithm
        self.A = A
        self.tol = tol
        self.max_iter = max_iter
        self.callback = callback
        self.should_stop = should_stop
        self.start = time.perf_counter()
        self.hvps_at_start = A.hvps
        self.history: list[dict] = []
        self.rhs_norm = float(torch.linalg.vector_norm(rhs))

    def hvps(self) -> int:
        return self.A.hvps - self.hvps_at_start

    def check_cancel(self, iteration: int) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled(
                f"cancelled after {iteration} solver iterations",
                details={"iteration": iteration, "hvps": self.hvps()},
            )

    def record(
        self, iteration: int, residual: float, normal_residual: float, x: torch.Tensor
    ) -> str | None:
        """Log one iteration and show the callback the iterate ``x``; the stop reason, if any.

        A tolerance met wins over a callback asking to stop (the solve converged either way).
        """
        row = {
            "iteration": iteration,
            "residual": residual,
            "normal_residual": normal_residual,
            "hvps": self.hvps(),
            "seconds": time.perf_counter() - self.start,
        }
        self.history.append(row)
        wants_stop = False
        if self.callback is not None:
            info = {k: row[k] for k in ("iteration", "residual", "normal_residual", "hvps")}
            wants_stop = self.callback({**info, "max_iter": self.max_iter, "x": x}) is True
        if normal_residual <= self.tol:
            return "tol_normal_residual"
        if residual <= self.tol:
            return "tol_residual"
        return "callback" if wants_stop else None

    def result(self, x, iteration, residual, normal_residual, converged, reason, **extra):
        return SolveResult(
            x=x,
            iterations=iteration,
            hvps=self.hvps(),
            residual=residual,
            normal_residual=normal_residual,
            seconds=time.perf_counter() - self.start,
            converged=converged,
            stop_reason=reason,
            algorithm=self.algorithm,
            history=self.history,
            extra=extra,
        )


def _norm(vector: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(vector))


def _relative(value: float, reference: float) -> float:
    """``value / reference``, with 0/0 = 0 (a zero right-hand side is solved by x = 0)."""
    if reference == 0.0:
        return 0.0 if value == 0.0 else math.inf
    return value / reference


def _require_finite(name: str, *values: float) -> None:
    if not all(math.isfinite(v) for v in values):
        raise NonFinite(f"the {name} iterate became non-finite", details={"solver": name})


def lsqr(
    A: LinearOperator,
    rhs: torch.Tensor,
    *,
    damp: float = 0.0,
    tol: float = 1e-4,
    max_iter: int = 100,
    callback: Callback | None = None,
    should_stop: ShouldStop | None = None,
) -> SolveResult:
    """LSQR (Paige & Saunders 1982) for ``min ‖A x − r‖² + damp²‖x‖²`` (MATH.md E8).

    Two HVPs per iteration (one ``matvec``, one ``rmatvec``) plus one ``rmatvec`` to start. The
    residual vectors ``A x`` and ``AᵀA x`` are carried along exactly from the Golub–Kahan
    relation ``A v_k = α_k u_k + β_{k+1} u_{k+1}`` (the products LSQR computes anyway), so the
    reported residuals are the true ones of the returned ``x``, at no extra HVP.
    """
    monitor = _Monitor(
        "lsqr", A, rhs, tol=tol, max_iter=max_iter, callback=callback, should_stop=should_stop
    )
    n = A.shape[1]
    x = torch.zeros(n, dtype=rhs.dtype, device=rhs.device)
    beta = monitor.rhs_norm
    if beta == 0.0:
        return monitor.result(x, 0, 0.0, 0.0, True, "zero_rhs")
    u = rhs / beta
    At_u = A.rmatvec(u)  # Aᵀ u_1
    alpha = _norm(At_u)
    _require_finite("lsqr", alpha)
    At_rhs_norm = alpha * beta  # ‖Aᵀ r‖, since Aᵀ r = β₁ Aᵀ u₁
    if alpha == 0.0:
        return monitor.result(x, 0, 1.0, 0.0, True, "rhs_orthogonal_to_range")
    At_rhs = beta * At_u
    v = At_u / alpha
    w = v.clone()
    Ax = torch.zeros_like(rhs)  # A x_k
    AtAx = torch.zeros_like(x)  # Aᵀ A x_k
    Aw_prev = torch.zeros_like(rhs)
    AtAw_prev = torch.zeros_like(x)
    w_coeff = 0.0  # w_k = v_k + w_coeff · w_{k-1}
    phibar, rhobar = beta, alpha
    damp2 = damp * damp
    residual = normal_residual = math.nan
    for iteration in range(1, max_iter + 1):
        monitor.check_cancel(iteration - 1)
        # Golub–Kahan step: β u ← A v − α u;  α v ← Aᵀ u − β v.
        Av = A.matvec(v)
        u = Av - alpha * u
        beta_next = _norm(u)
        if beta_next > 0.0:
            u = u / beta_next
        At_u_next = A.rmatvec(u)
        # Aᵀ A v_k = α_k Aᵀu_k + β_{k+1} Aᵀu_{k+1}
        AtAv = alpha * At_u + beta_next * At_u_next
        v_next = At_u_next - beta_next * v
        alpha_next = _norm(v_next)
        _require_finite("lsqr", beta_next, alpha_next)
        if alpha_next > 0.0:
            v_next = v_next / alpha_next
        # Plane rotations: first eliminate the damping, then the subdiagonal β.
        if damp > 0.0:
            rhobar1 = math.hypot(rhobar, damp)
            phibar = phibar * (rhobar / rhobar1)
        else:
            rhobar1 = rhobar  # keeps its sign, as in Paige & Saunders' rotation
        rho = math.hypot(rhobar1, beta_next)
        cs, sn = rhobar1 / rho, beta_next / rho
        theta = sn * alpha_next
        rhobar = -cs * alpha_next
        phi = cs * phibar
        phibar = sn * phibar
        # Update x and the exact products A x, Aᵀ A x through w_k = v_k + w_coeff · w_{k-1}.
        Aw = Av + w_coeff * Aw_prev
        AtAw = AtAv + w_coeff * AtAw_prev
        step = phi / rho
        x = x + step * w
        Ax = Ax + step * Aw
        AtAx = AtAx + step * AtAw
        w_coeff = -theta / rho
        w = v_next + w_coeff * w
        Aw_prev, AtAw_prev = Aw, AtAw
        u, v, alpha, At_u = u, v_next, alpha_next, At_u_next
        residual = _relative(_norm(Ax - rhs), monitor.rhs_norm)
        normal_residual = _relative(_norm(AtAx - At_rhs + damp2 * x), At_rhs_norm)
        _require_finite("lsqr", residual, normal_residual)
        reason = monitor.record(iteration, residual, normal_residual, x)
        if reason is not None:
            converged = reason != "callback"
            return monitor.result(x, iteration, residual, normal_residual, converged, reason)
        if alpha_next == 0.0 or beta_next == 0.0:
            # The Krylov space is exhausted: x is the exact (damped) least-squares solution.
            return monitor.result(x, iteration, residual, normal_residual, True, "exact")
    return monitor.result(x, max_iter, residual, normal_residual, False, "max_iter")


def cgls(
    A: LinearOperator,
    rhs: torch.Tensor,
    *,
    damp: float = 0.0,
    tol: float = 1e-4,
    max_iter: int = 100,
    callback: Callback | None = None,
    should_stop: ShouldStop | None = None,
) -> SolveResult:
    """CG on the normal equations ``(AᵀA + damp² I) x = Aᵀ r`` (CGLS; MATH.md E8).

    Two HVPs per iteration plus one to start. ``A x − r`` is updated recursively and
    ``Aᵀ(r − Ax) − damp² x`` is recomputed from it each iteration.
    """
    monitor = _Monitor(
        "cg", A, rhs, tol=tol, max_iter=max_iter, callback=callback, should_stop=should_stop
    )
    x = torch.zeros(A.shape[1], dtype=rhs.dtype, device=rhs.device)
    if monitor.rhs_norm == 0.0:
        return monitor.result(x, 0, 0.0, 0.0, True, "zero_rhs")
    r = rhs.clone()  # r − A x
    s = A.rmatvec(r)  # Aᵀ(r − A x) − damp² x: minus the gradient of the damped objective
    At_rhs_norm = _norm(s)
    _require_finite("cg", At_rhs_norm)
    if At_rhs_norm == 0.0:
        return monitor.result(x, 0, 1.0, 0.0, True, "rhs_orthogonal_to_range")
    p = s.clone()
    gamma = At_rhs_norm**2
    damp2 = damp * damp
    residual = normal_residual = math.nan
    for iteration in range(1, max_iter + 1):
        monitor.check_cancel(iteration - 1)
        q = A.matvec(p)
        curvature = _norm(q) ** 2 + damp2 * _norm(p) ** 2
        _require_finite("cg", curvature)
        if curvature == 0.0:
            return monitor.result(x, iteration - 1, residual, normal_residual, True, "exact")
        step = gamma / curvature
        x = x + step * p
        r = r - step * q
        s = A.rmatvec(r) - damp2 * x
        gamma_next = _norm(s) ** 2
        residual = _relative(_norm(r), monitor.rhs_norm)
        normal_residual = _relative(math.sqrt(gamma_next), At_rhs_norm)
        _require_finite("cg", residual, normal_residual)
        reason = monitor.record(iteration, residual, normal_residual, x)
        if reason is not None:
            converged = reason != "callback"
            return monitor.result(x, iteration, residual, normal_residual, converged, reason)
        p = s + (gamma_next / gamma) * p
        gamma = gamma_next
    return monitor.result(x, max_iter, residual, normal_residual, False, "max_iter")


def normal_lambda_max(
    A: LinearOperator,
    *,
    damp: float = 0.0,
    iterations: int = 10,
    seed: int = 0,
    like: torch.Tensor,
) -> float:
    """Power-iteration estimate of ``λ_max(AᵀA + damp² I)`` (for E7's σ); 2 HVPs per iteration.

    The Rayleigh quotient never exceeds the true ``λ_max``, which is why ``neumann`` multiplies
    it by a safety factor.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    vector = torch.randn(A.shape[1], generator=generator, dtype=like.dtype).to(like.device)
    vector = vector / _norm(vector)
    estimate = 0.0
    for _ in range(max(iterations, 1)):
        image = A.rmatvec(A.matvec(vector)) + damp * damp * vector
        estimate = float(torch.dot(vector, image))
        size = _norm(image)
        if not math.isfinite(size):
            raise NonFinite(
                "power iteration on AᵀA became non-finite", details={"solver": "neumann"}
            )
        if size == 0.0:
            return 0.0
        vector = image / size
    return estimate


def neumann(
    A: LinearOperator,
    rhs: torch.Tensor,
    *,
    damp: float = 0.0,
    tol: float = 1e-4,
    max_iter: int = 100,
    sigma: float | None = None,
    power_iters: int = 10,
    safety: float = 1.1,
    patience: int = 3,
    seed: int = 0,
    callback: Callback | None = None,
    should_stop: ShouldStop | None = None,
) -> SolveResult:
    """The paper's scale-invariant series (MATH.md E7) on the normal equations of ``A``.

    With ``N = AᵀA + damp² I``: ``x₀ = Aᵀr/σ²``, ``x_{t+1} = Aᵀr/σ² + (I − N/σ²) x_t``, which
    converges when every eigenvalue of ``N/σ²`` lies in (0, 2). Unless ``sigma`` is given,
    ``σ² = safety · λ̂_max(N)`` from ``power_iters`` power iterations (their HVPs are counted). The
    normal residual of a convergent series never grows, so growth for ``patience`` consecutive
    iterations, growth beyond 10⁶ × the start, or a non-finite value raises ``SolverDiverged``.
    """
    monitor = _Monitor(
        "neumann", A, rhs, tol=tol, max_iter=max_iter, callback=callback, should_stop=should_stop
    )
    x = torch.zeros(A.shape[1], dtype=rhs.dtype, device=rhs.device)
    if monitor.rhs_norm == 0.0:
        return monitor.result(x, 0, 0.0, 0.0, True, "zero_rhs")
    lambda_max = None
    if sigma is None:
        lambda_max = normal_lambda_max(A, damp=damp, iterations=power_iters, seed=seed, like=rhs)
        sigma2 = safety * lambda_max
    else:
        sigma2 = float(sigma) ** 2
    At_rhs = A.rmatvec(rhs)
    At_rhs_norm = _norm(At_rhs)
    _require_finite("neumann", At_rhs_norm)
    extra = {"sigma": math.sqrt(sigma2), "lambda_max_estimate": lambda_max}
    if At_rhs_norm == 0.0:
        return monitor.result(x, 0, 1.0, 0.0, True, "rhs_orthogonal_to_range", **extra)
    if not sigma2 > 0.0:
        raise SolverDiverged(
            "the normal operator AᵀA is zero: no σ makes the series converge", details=extra
        )
    gradient = -At_rhs  # N x − Aᵀ r at x = 0
    damp2 = damp * damp
    best = previous = math.inf
    growth = 0
    residual = normal_residual = math.nan
    for iteration in range(1, max_iter + 1):
        monitor.check_cancel(iteration - 1)
        x = x - gradient / sigma2  # x_t = Aᵀr/σ² + (I − N/σ²) x_{t−1}
        misfit = A.matvec(x) - rhs
        gradient = A.rmatvec(misfit) + damp2 * x
        residual = _relative(_norm(misfit), monitor.rhs_norm)
        normal_residual = _relative(_norm(gradient), At_rhs_norm)
        growth = growth + 1 if normal_residual > previous else 0
        if (
            not math.isfinite(normal_residual)
            or growth >= patience
            or normal_residual > 1e6 * min(best, 1.0)
        ):
            raise SolverDiverged(
                f"the Neumann series diverged at iteration {iteration} (normal residual "
                f"{normal_residual:.3g}, σ = {math.sqrt(sigma2):.3g}): σ² is below λ_max(AᵀA)/2",
                details={
                    **extra,
                    "iteration": iteration,
                    "normal_residual": _json_float(normal_residual),
                    "history": monitor.history[-5:],
                },
            )
        previous, best = normal_residual, min(best, normal_residual)
        reason = monitor.record(iteration, residual, normal_residual, x)
        if reason is not None:
            converged = reason != "callback"
            return monitor.result(
                x, iteration, residual, normal_residual, converged, reason, **extra
            )
    return monitor.result(x, max_iter, residual, normal_residual, False, "max_iter", **extra)


SOLVERS = {"lsqr": lsqr, "neumann": neumann, "cg": cgls}


def solve(algorithm: str, A: LinearOperator, rhs: torch.Tensor, **kwargs) -> SolveResult:
    """Dispatch on ``"lsqr"`` | ``"neumann"`` | ``"cg"`` (API.md ``solver.algorithm``)."""
    try:
        solver = SOLVERS[algorithm]
    except KeyError:
        raise ValueError(f"unknown solver {algorithm!r}; choose one of {sorted(SOLVERS)}") from None
    return solver(A, rhs, **kwargs)
