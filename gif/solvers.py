"""Least-squares solvers for ``min_x ‖A x − r‖² + λ²‖x‖²`` (method.md E7, E8).

Nothing here knows about networks: ``A`` is a ``LinearOperator`` (a matvec, a transposed matvec,
and how many HVPs each costs). Four algorithms:

- ``lsqr`` — Paige & Saunders (1982), Golub–Kahan bidiagonalisation with optional damping (E8).
- ``cgls`` — conjugate gradients on the normal equations ``(AᵀA + λ²I) x = Aᵀr`` (E8).
- ``minres`` — Paige & Saunders (1975) for a *symmetric* ``A`` (possibly indefinite or
  singular): one product per iteration instead of two (E8, the IF/PIF/FIF systems). No damping.
- ``neumann`` — the paper's scale-invariant series on the normal equations (E7), with σ found by
  power iteration and divergence detection.

Every solver reports, per iteration and at the end, the relative residual ``‖Ax − r‖/‖r‖`` and the
relative normal-equation residual ``‖Aᵀ(Ax − r) + λ²x‖/‖Aᵀr‖`` (with damping, the gradient of the
damped objective, which vanishes at its minimiser), counted HVPs (all of them, Neumann's power
iterations included) and wall time.

**Stopping** (method.md E8, the rules of ``scipy.sparse.linalg.lsqr``, written for float32 too).
Every result names the rule that ended it in ``stop_reason``:

- ``tol_normal_residual`` / ``tol_residual``: that relative residual is ``≤ tol`` (converged;
  the systems are least-squares problems, usually inconsistent, so the normal residual is the
  one that usually decides);
- ``stagnation``: for ``stagnation_window`` iterations (or 10 % of the iterations so far, if
  more) no iterate made real progress: neither relative residual fell by more than the working
  precision allows (``PRECISION_ULPS · eps`` of the dtype, relative: ≈ 1e-6 in float32,
  ≈ 2e-15 in float64) without the residual rising. Past that point more iterations buy
  nothing, and in float32 a Krylov solver loses orthogonality and its iterate drifts along the
  near-null directions of ``A`` while the residuals stay flat (method.md E8, check 6), so the
  solve returns the last iterate that made progress (``extra["returned_iteration"]``), not the
  drifted last one;
- ``condition_limit``: LSQR's (MINRES's) running estimate of ``cond(A)`` passed ``conlim``
  (scipy's default 1e8; 0 disables it, as in scipy);
- ``callback``: the per-iteration callback returned ``True``;
- ``max_iter``; ``zero_rhs`` (``r = 0``: ``x = 0`` is the exact solution, no HVP is spent);
  ``rhs_orthogonal_to_range`` (``Aᵀr = 0``: ``x = 0`` is the least-squares solution); ``exact``
  (the Krylov space is exhausted, or CG met zero curvature);
- ``diverged``: only the Neumann series can diverge; it raises ``SolverDiverged`` whose
  ``details["stop_reason"]`` says so.

``converged`` is true for the tolerance rules and for the exact answers (``zero_rhs``,
``rhs_orthogonal_to_range``, ``exact``), false otherwise.

**Damping** is either absolute (``damp = λ``) or relative to the operator's scale
(``relative_damp = d``: ``λ = d · ‖Aᵀr‖/‖r‖``, the gain of ``A`` on the right-hand side, which
every solver gets from its first product, so it costs nothing and is reproducible). Scaling
``A`` and ``r`` by ``c`` scales that gain by ``c``, so the relative form keeps the solution
unchanged (method.md E3, Prop. 1 i); the result reports the ``λ`` used (``extra["damp"]``).
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

PRECISION_ULPS = 8
"""A relative residual that falls by less than ``PRECISION_ULPS · eps`` is rounding, not progress
(float32: 9.5e-7, method.md E8's "about 1e-6"; float64: 1.8e-15)."""
STAGNATION_WINDOW = 5
"""Iterations without progress beyond the working precision before ``stagnation`` (0: never)."""
STAGNATION_FRACTION = 0.1
"""...or this fraction of the iterations it took to reach the last progress, if that is longer: a
slow series (Neumann) whose geometric decrease per iteration is below its rounding noise still
sets a new low every few dozen iterations, and must not be called stagnant for it."""
PLATEAU = 2.0
"""A stagnating residual stays within this factor of its best; beyond it, it is rising (for the
Neumann series: possibly diverging), not flat."""
CONLIM = 1e8
"""scipy's default limit on the condition estimate (LSQR, MINRES); 0 disables the rule."""
NEUMANN_MARGIN = 1.5
"""σ² = ``NEUMANN_MARGIN`` · λ̂ / 2: E7's bound ``σ² > λ_max/2`` with a margin for λ̂, the 10-step
power-iteration estimate, which falls short of ``λ_max``. Measured (``bench/bench_solvers.py
--power-check``, docs/benchmarks.md) on the benchmark's TinyNet operators, 6 problems × 3
operators × 5 seeds: for GIF's ``H[:,S]`` and FIF's ``H[S,S]`` λ̂ matched ARPACK's λ_max to 4
digits every time; for PIF's full ``H`` it fell short by up to 27 % (λ_max/λ̂ = 1.274, twice
above 1.2 in 30). 1.5 keeps ``λ_max/σ² ≤ 2 · 1.274 / 1.5 = 1.70 < 2`` there, and puts σ²
at 0.75 λ̂ instead of the 1.1 λ̂ used before, so the series needs ~1.5× fewer iterations."""
DIVERGENCE_GROWTH = 100.0
"""The Neumann series diverges when its normal residual stays this far above its best."""
CONVERGED = frozenset(
    {"tol_normal_residual", "tol_residual", "zero_rhs", "rhs_orthogonal_to_range", "exact"}
)
"""Stop reasons that mean the returned ``x`` solves the problem to the tolerance (or exactly)."""


class LinearOperator:
    """``A`` of shape ``(m, n)`` given by ``matvec(x) = A x`` and ``rmatvec(u) = Aᵀ u``.

    ``hvps`` counts Hessian-vector products spent so far (``hvps_per_matvec`` per ``matvec``, ...).
    ``symmetric`` says ``A = Aᵀ`` (square): only then may ``minres`` solve with it.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        matvec: Callable[[torch.Tensor], torch.Tensor],
        rmatvec: Callable[[torch.Tensor], torch.Tensor],
        *,
        hvps_per_matvec: int = 1,
        hvps_per_rmatvec: int = 1,
        symmetric: bool = False,
    ):
        self.shape = (int(shape[0]), int(shape[1]))
        if symmetric and self.shape[0] != self.shape[1]:
            raise ValueError(f"a symmetric operator is square, got shape {self.shape}")
        self._matvec = matvec
        self._rmatvec = rmatvec
        self.hvps_per_matvec = hvps_per_matvec
        self.hvps_per_rmatvec = hvps_per_rmatvec
        self.symmetric = symmetric
        self.hvps = 0

    @classmethod
    def from_matrix(cls, matrix: torch.Tensor) -> LinearOperator:
        """A dense matrix as an operator (one "HVP" per product; for tests and benchmarks)."""
        symmetric = matrix.shape[0] == matrix.shape[1] and bool(torch.equal(matrix, matrix.T))
        return cls(
            tuple(matrix.shape), lambda x: matrix @ x, lambda u: matrix.T @ u, symmetric=symmetric
        )

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
        """JSON-able summary (no ``x``): api.md's ``result.solver`` plus the history."""
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
    """Shared bookkeeping: history, callback, cancellation, the stopping rules, the result."""

    def __init__(
        self,
        algorithm,
        A,
        rhs,
        *,
        tol,
        max_iter,
        callback,
        should_stop,
        stagnation_window=STAGNATION_WINDOW,
        conlim=0.0,
        damped=False,
    ):
        if not 0 < tol < 1:
            raise ValueError(f"tol must be in (0, 1), got {tol}")
        if max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}")
        if stagnation_window < 0:
            raise ValueError(f"stagnation_window must be >= 0, got {stagnation_window}")
        if conlim < 0:
            raise ValueError(f"conlim must be >= 0 (0: no limit), got {conlim}")
        if rhs.shape != (A.shape[0],):
            raise ValueError(f"rhs must have shape ({A.shape[0]},), got {tuple(rhs.shape)}")
        self.algorithm = algorithm
        self.A = A
        self.tol = tol
        self.max_iter = max_iter
        self.callback = callback
        self.should_stop = should_stop
        self.stagnation_window = stagnation_window
        self.conlim = conlim
        self.damped = damped
        self.precision = PRECISION_ULPS * torch.finfo(rhs.dtype).eps
        self.start = time.perf_counter()
        self.hvps_at_start = A.hvps
        self.history: list[dict] = []
        # The last iterate that lowered a residual by more than the precision (x₀ = 0 has 1, 1).
        self.anchor = _Anchor(iteration=0, residual=1.0, normal_residual=1.0, x=None)
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
        self,
        iteration: int,
        residual: float,
        normal_residual: float,
        x: torch.Tensor,
        condition: float | None = None,
    ) -> str | None:
        """Log one iteration, show the callback the iterate ``x``; the stop reason, if any.

        ``condition`` is the solver's running estimate of ``cond(A)`` (LSQR, MINRES), checked
        against ``conlim``. A tolerance met wins over every other rule.
        """
        row = {
            "iteration": iteration,
            "residual": residual,
            "normal_residual": normal_residual,
            "hvps": self.hvps(),
            "seconds": time.perf_counter() - self.start,
        }
        self.history.append(row)
        if self.progressed(residual, normal_residual):
            self.anchor = _Anchor(iteration, residual, normal_residual, x)
        wants_stop = False
        if self.callback is not None:
            info = {k: row[k] for k in ("iteration", "residual", "normal_residual", "hvps")}
            wants_stop = self.callback({**info, "max_iter": self.max_iter, "x": x}) is True
        if normal_residual <= self.tol:
            return "tol_normal_residual"
        if residual <= self.tol:
            return "tol_residual"
        if wants_stop:
            return "callback"
        if condition is not None and 0 < self.conlim <= condition:
            return "condition_limit"
        if self.stagnated():
            return "stagnation"
        return None

    def progressed(self, residual: float, normal_residual: float) -> bool:
        """Real progress over the anchor: a residual fell by more than the working precision
        allows (relative, ``PRECISION_ULPS · eps``), and the residual did not rise beyond it.

        Undamped, ``‖Ax − r‖`` never rises in exact arithmetic for any of these solvers, so an
        iterate whose residual rose was moved by rounding (MINRES's jumps along near-null
        directions of a singular ``A`` in float32) and is no new anchor, whatever its normal
        residual does. With damping the undamped residual may rise, so that guard is off.
        """
        anchor, precision = self.anchor, self.precision
        if not self.damped and residual > anchor.residual * (1 + precision):
            return False
        return (
            anchor.residual - residual > precision * anchor.residual
            or anchor.normal_residual - normal_residual > precision * anchor.normal_residual
        )

    def stagnated(self) -> bool:
        """A plateau (E8): for ``stagnation_window`` iterations (or ``STAGNATION_FRACTION`` of the
        anchor's iteration count, if more) no iterate made progress over the anchor
        (``progressed``), and the latest values are still near the anchor's (flat, not rising: a
        rising Neumann series may be diverging)."""
        anchor, latest = self.anchor, self.history[-1]
        window = max(self.stagnation_window, math.ceil(STAGNATION_FRACTION * anchor.iteration))
        return (
            self.stagnation_window > 0
            and latest["iteration"] - anchor.iteration >= window
            and latest["residual"] <= PLATEAU * anchor.residual
            and latest["normal_residual"] <= PLATEAU * anchor.normal_residual
        )

    def result(self, x, iteration, residual, normal_residual, reason, **extra) -> SolveResult:
        """The final result; on ``stagnation`` the anchor's iterate, the last that made progress.

        The iterates after it differ from it only by what rounding put into them: in float32,
        a drift along the near-null directions of ``A`` that the residuals cannot see (E8).
        """
        if reason == "stagnation":
            anchor = self.anchor
            x = torch.zeros_like(x) if anchor.x is None else anchor.x
            residual, normal_residual = anchor.residual, anchor.normal_residual
            extra = {**extra, "returned_iteration": anchor.iteration}
        return SolveResult(
            x=x,
            iterations=iteration,
            hvps=self.hvps(),
            residual=residual,
            normal_residual=normal_residual,
            seconds=time.perf_counter() - self.start,
            converged=reason in CONVERGED,
            stop_reason=reason,
            algorithm=self.algorithm,
            history=self.history,
            extra=extra,
        )


@dataclass(frozen=True)
class _Anchor:
    """An iterate kept for ``stagnation`` (a reference: every solver makes a new ``x`` each
    iteration and never updates it in place)."""

    iteration: int
    residual: float
    normal_residual: float
    x: torch.Tensor | None


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


def _check_damping(damp: float, relative_damp: float) -> None:
    if damp < 0 or relative_damp < 0:
        raise ValueError(f"damping must be >= 0, got damp={damp}, relative_damp={relative_damp}")
    if damp > 0 and relative_damp > 0:
        raise ValueError("give damp (absolute) or relative_damp, not both")


def _damping(damp: float, relative_damp: float, gain: float) -> tuple[float, dict]:
    """The Tikhonov ``λ`` and what the result reports about it (E8).

    ``gain = ‖Aᵀr‖/‖r‖`` scales like ``A``: ``λ = relative_damp · gain`` keeps a damped solve
    invariant when ``A`` and ``r`` are scaled together (a scaled loss, E3 / Prop. 1 i).
    """
    if relative_damp > 0:
        lam = relative_damp * gain
        return lam, {"damp": lam, "damp_scale": gain}
    return damp, {"damp": damp}


def lsqr(
    A: LinearOperator,
    rhs: torch.Tensor,
    *,
    damp: float = 0.0,
    relative_damp: float = 0.0,
    tol: float = 1e-4,
    max_iter: int = 100,
    conlim: float = CONLIM,
    stagnation_window: int = STAGNATION_WINDOW,
    callback: Callback | None = None,
    should_stop: ShouldStop | None = None,
) -> SolveResult:
    """LSQR (Paige & Saunders 1982) for ``min ‖A x − r‖² + λ²‖x‖²`` (method.md E8).

    Two HVPs per iteration (one ``matvec``, one ``rmatvec``) plus one ``rmatvec`` to start. The
    residual vectors ``A x`` and ``AᵀA x`` are carried along exactly from the Golub–Kahan
    relation ``A v_k = α_k u_k + β_{k+1} u_{k+1}`` (the products LSQR computes anyway), so the
    reported residuals are the true ones of the returned ``x``, at no extra HVP. The condition
    estimate is scipy's: ``‖B_k‖_F · ‖D_k‖_F`` with ``D_k`` the search directions over ``ρ``.
    """
    _check_damping(damp, relative_damp)
    monitor = _Monitor(
        "lsqr", A, rhs, tol=tol, max_iter=max_iter, callback=callback, should_stop=should_stop,
        stagnation_window=stagnation_window, conlim=conlim, damped=damp > 0 or relative_damp > 0,
    )
    n = A.shape[1]
    x = torch.zeros(n, dtype=rhs.dtype, device=rhs.device)
    beta = monitor.rhs_norm
    if beta == 0.0:
        return monitor.result(x, 0, 0.0, 0.0, "zero_rhs")
    u = rhs / beta
    At_u = A.rmatvec(u)  # Aᵀ u_1
    alpha = _norm(At_u)
    _require_finite("lsqr", alpha)
    At_rhs_norm = alpha * beta  # ‖Aᵀ r‖, since Aᵀ r = β₁ Aᵀ u₁
    if alpha == 0.0:
        return monitor.result(x, 0, 1.0, 0.0, "rhs_orthogonal_to_range")
    damp, extra = _damping(damp, relative_damp, gain=alpha)  # α₁ = ‖Aᵀr‖/‖r‖
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
    bidiagonal_norm2 = direction_norm2 = 0.0  # ‖B_k‖_F², ‖D_k‖_F²: the condition estimate
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
        bidiagonal_norm2 += alpha * alpha + beta_next * beta_next + damp2
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
        direction_norm2 += (_norm(w) / rho) ** 2
        x = x + step * w
        Ax = Ax + step * Aw
        AtAx = AtAx + step * AtAw
        w_coeff = -theta / rho
        w = v_next + w_coeff * w
        Aw_prev, AtAw_prev = Aw, AtAw
        v, alpha, At_u = v_next, alpha_next, At_u_next
        residual = _relative(_norm(Ax - rhs), monitor.rhs_norm)
        normal_residual = _relative(_norm(AtAx - At_rhs + damp2 * x), At_rhs_norm)
        _require_finite("lsqr", residual, normal_residual)
        extra["condition_estimate"] = math.sqrt(bidiagonal_norm2 * direction_norm2)
        reason = monitor.record(
            iteration, residual, normal_residual, x, extra["condition_estimate"]
        )
        if reason is not None:
            return monitor.result(x, iteration, residual, normal_residual, reason, **extra)
        if alpha_next == 0.0 or beta_next == 0.0:
            # The Krylov space is exhausted: x is the exact (damped) least-squares solution.
            return monitor.result(x, iteration, residual, normal_residual, "exact", **extra)
    return monitor.result(x, max_iter, residual, normal_residual, "max_iter", **extra)


def cgls(
    A: LinearOperator,
    rhs: torch.Tensor,
    *,
    damp: float = 0.0,
    relative_damp: float = 0.0,
    tol: float = 1e-4,
    max_iter: int = 100,
    stagnation_window: int = STAGNATION_WINDOW,
    callback: Callback | None = None,
    should_stop: ShouldStop | None = None,
) -> SolveResult:
    """CG on the normal equations ``(AᵀA + λ² I) x = Aᵀ r`` (CGLS; method.md E8).

    Two HVPs per iteration plus one to start. ``A x − r`` is updated recursively and
    ``Aᵀ(r − Ax) − λ² x`` is recomputed from it each iteration. No condition estimate.
    """
    _check_damping(damp, relative_damp)
    monitor = _Monitor(
        "cg", A, rhs, tol=tol, max_iter=max_iter, callback=callback, should_stop=should_stop,
        stagnation_window=stagnation_window, damped=damp > 0 or relative_damp > 0,
    )
    x = torch.zeros(A.shape[1], dtype=rhs.dtype, device=rhs.device)
    if monitor.rhs_norm == 0.0:
        return monitor.result(x, 0, 0.0, 0.0, "zero_rhs")
    r = rhs.clone()  # r − A x
    s = A.rmatvec(r)  # Aᵀ(r − A x) − λ² x: minus the gradient of the damped objective
    At_rhs_norm = _norm(s)
    _require_finite("cg", At_rhs_norm)
    if At_rhs_norm == 0.0:
        return monitor.result(x, 0, 1.0, 0.0, "rhs_orthogonal_to_range")
    damp, extra = _damping(damp, relative_damp, gain=At_rhs_norm / monitor.rhs_norm)
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
            return monitor.result(x, iteration - 1, residual, normal_residual, "exact", **extra)
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
            return monitor.result(x, iteration, residual, normal_residual, reason, **extra)
        p = s + (gamma_next / gamma) * p
        gamma = gamma_next
    return monitor.result(x, max_iter, residual, normal_residual, "max_iter", **extra)


def minres(
    A: LinearOperator,
    rhs: torch.Tensor,
    *,
    damp: float = 0.0,
    relative_damp: float = 0.0,
    tol: float = 1e-4,
    max_iter: int = 100,
    conlim: float = CONLIM,
    stagnation_window: int = STAGNATION_WINDOW,
    callback: Callback | None = None,
    should_stop: ShouldStop | None = None,
) -> SolveResult:
    """MINRES (Paige & Saunders 1975) for ``min ‖A x − r‖`` with a symmetric ``A`` (method.md E8).

    ``A`` may be indefinite and singular (the Hessian of a network): the iterates minimise the
    residual over the Krylov space ``K_k(A, r)``. One product per iteration plus one to start:
    the Lanczos recurrence runs one step ahead, so that ``A² v_k = β_k A v_{k-1} + α_k A v_k +
    β_{k+1} A v_{k+1}`` is known when ``x_k`` is, and ``A x_k`` and ``A² x_k`` are carried along
    like ``x_k`` itself: the reported residual ``‖A x − r‖/‖r‖`` and normal residual
    ``‖A(A x − r)‖/‖A r‖`` are those of the returned ``x``. The condition estimate is scipy's
    ``max γ / min γ`` over the diagonal of the QR factor of the Lanczos tridiagonal.

    Tikhonov damping is not a shift of a symmetric system (its normal equations are
    ``(A² + λ²I) x = A r``), so ``damp`` must be 0: damped solves use ``lsqr``.
    """
    if not A.symmetric:
        raise ValueError("minres needs a symmetric operator (A = Aᵀ); use lsqr for this one")
    if damp > 0 or relative_damp > 0:
        raise ValueError("minres solves the undamped system; use lsqr for a damped solve")
    monitor = _Monitor(
        "minres", A, rhs, tol=tol, max_iter=max_iter, callback=callback,
        should_stop=should_stop, stagnation_window=stagnation_window, conlim=conlim,
    )
    x = torch.zeros_like(rhs)
    if monitor.rhs_norm == 0.0:
        return monitor.result(x, 0, 0.0, 0.0, "zero_rhs")
    zeros = torch.zeros_like(rhs)
    beta = monitor.rhs_norm  # β_k, here β_1
    v = rhs / beta  # v_k
    Av = A.matvec(v)
    A_rhs = beta * Av
    A_rhs_norm = _norm(A_rhs)
    _require_finite("minres", A_rhs_norm)
    if A_rhs_norm == 0.0:
        return monitor.result(x, 0, 1.0, 0.0, "rhs_orthogonal_to_range")
    alpha = float(torch.dot(v, Av))  # α_k
    v_next, beta_next = _lanczos_vector(Av - alpha * v)  # v_{k+1}, β_{k+1}
    Av_prev = zeros  # A v_{k-1}
    # Rotation state (Q_{k-1}) and the last two search directions w and their images A w, A² w.
    cs, sn, dbar, epsilon, phibar = -1.0, 0.0, 0.0, 0.0, beta
    gamma_max, gamma_min = 0.0, math.inf
    tiny = torch.finfo(rhs.dtype).eps
    w_old = w = Aw_old = Aw = AAw_old = AAw = zeros
    Ax, AAx = zeros, zeros
    residual = normal_residual = math.nan
    extra: dict = {}
    for iteration in range(1, max_iter + 1):
        monitor.check_cancel(iteration - 1)
        # Lanczos one step ahead: A v_{k+1}, α_{k+1}, v_{k+2}, β_{k+2}.
        if beta_next > 0.0:
            Av_next = A.matvec(v_next)
            alpha_next = float(torch.dot(v_next, Av_next))
            v_after, beta_after = _lanczos_vector(
                Av_next - alpha_next * v_next - beta_next * v
            )
        else:  # the Krylov space is exhausted: v_{k+1} = 0
            Av_next, alpha_next, v_after, beta_after = zeros, 0.0, zeros, 0.0
        _require_finite("minres", alpha_next, beta_after)
        # Column k of the tridiagonal (β_k, α_k, β_{k+1}): apply Q_{k-1}, then a new rotation.
        epsilon_old = epsilon
        delta = cs * dbar + sn * alpha
        gbar = sn * dbar - cs * alpha
        epsilon = sn * beta_next
        dbar = -cs * beta_next
        gamma = max(math.hypot(gbar, beta_next), tiny)
        cs, sn = gbar / gamma, beta_next / gamma
        phi = cs * phibar
        phibar = sn * phibar
        gamma_max, gamma_min = max(gamma_max, gamma), min(gamma_min, gamma)
        # w_k = (v_k − ε_k w_{k-2} − δ_k w_{k-1}) / γ_k, and the same recurrence for A w, A² w.
        AAv = beta * Av_prev + alpha * Av + beta_next * Av_next
        w_new = (v - epsilon_old * w_old - delta * w) / gamma
        Aw_new = (Av - epsilon_old * Aw_old - delta * Aw) / gamma
        AAw_new = (AAv - epsilon_old * AAw_old - delta * AAw) / gamma
        w_old, w, Aw_old, Aw, AAw_old, AAw = w, w_new, Aw, Aw_new, AAw, AAw_new
        x = x + phi * w
        Ax = Ax + phi * Aw
        AAx = AAx + phi * AAw
        residual = _relative(_norm(Ax - rhs), monitor.rhs_norm)
        normal_residual = _relative(_norm(AAx - A_rhs), A_rhs_norm)
        _require_finite("minres", residual, normal_residual)
        extra["condition_estimate"] = gamma_max / gamma_min
        reason = monitor.record(
            iteration, residual, normal_residual, x, extra["condition_estimate"]
        )
        if reason is not None:
            return monitor.result(x, iteration, residual, normal_residual, reason, **extra)
        if beta_next == 0.0:
            return monitor.result(x, iteration, residual, normal_residual, "exact", **extra)
        v, v_next = v_next, v_after
        Av_prev, Av = Av, Av_next
        alpha, beta, beta_next = alpha_next, beta_next, beta_after
    return monitor.result(x, max_iter, residual, normal_residual, "max_iter", **extra)


def _lanczos_vector(vector: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``(vector / ‖vector‖, ‖vector‖)``, or a zero vector and 0 when it vanished."""
    size = _norm(vector)
    return (vector / size if size > 0.0 else torch.zeros_like(vector)), size


def normal_lambda_max(
    A: LinearOperator,
    *,
    damp: float = 0.0,
    iterations: int = 10,
    seed: int = 0,
    like: torch.Tensor,
    should_stop: ShouldStop | None = None,
) -> float:
    """Power-iteration estimate of ``λ_max(AᵀA + damp² I)`` (for E7's σ); 2 HVPs per iteration.

    The start vector is drawn from ``seed`` (the job's seed: reproducible). The Rayleigh
    quotient never exceeds the true ``λ_max``, which is why ``neumann`` adds a margin.
    ``should_stop`` is polled before every iteration (``Cancelled``).
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    vector = torch.randn(A.shape[1], generator=generator, dtype=like.dtype).to(like.device)
    vector = vector / _norm(vector)
    estimate = 0.0
    for iteration in range(max(iterations, 1)):
        if should_stop is not None and should_stop():
            raise Cancelled(
                f"cancelled after {iteration} power iterations",
                details={"phase": "power_iteration", "iteration": iteration},
            )
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


COLUMN_FLOOR = 1e-2
"""``column_scaling`` never scales a column by more than ``1 / (COLUMN_FLOOR · rms)`` of the
estimated norms: a column that is (nearly) zero, a parameter the Hessian sample does not
touch, must not become the cheapest direction of the scaled problem."""


def column_norms(
    A: LinearOperator,
    *,
    probes: int,
    seed: int = 0,
    like: torch.Tensor,
    should_stop: ShouldStop | None = None,
) -> torch.Tensor:
    """Hutchinson estimate of the column norms ``‖A[:,j]‖`` from ``probes`` products ``Aᵀz``.

    For ``z`` with independent entries ±1, ``E[(Aᵀz)_j²] = Σ_i A_ij² = ‖A[:,j]‖²`` (the diagonal
    of the normal matrix ``AᵀA``), so the mean of ``(Aᵀz)²`` over the probes estimates it
    without ever forming a column: one ``rmatvec`` (one HVP for E6's operators) per probe. The
    probes are drawn from ``seed`` (the job's seed: reproducible); ``should_stop`` is polled
    before every one (``Cancelled``).
    """
    if probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    total = torch.zeros(A.shape[1], dtype=like.dtype, device=like.device)
    for probe in range(probes):
        if should_stop is not None and should_stop():
            raise Cancelled(
                f"cancelled after {probe} of {probes} preconditioner probes",
                details={"phase": "preconditioner", "probe": probe},
            )
        signs = torch.randint(0, 2, (A.shape[0],), generator=generator, dtype=like.dtype) * 2 - 1
        image = A.rmatvec(signs.to(like.device))
        _require_finite("column_norms", _norm(image))
        total.add_(image * image)
    return (total / probes).sqrt()


def column_scaling(norms: torch.Tensor) -> torch.Tensor:
    """The right preconditioner ``D = diag(1 / ‖A[:,j]‖)`` of ``column_norms`` (Jacobi scaling
    of the normal equations), floored at ``COLUMN_FLOOR`` of the norms' root mean square.

    Scaling ``A`` by ``c > 0`` scales every norm by ``c`` and ``D`` by ``1/c``, so ``A·D`` and
    the update ``x = D·y`` it gives are unchanged (method.md E3, Prop. 1 i).
    """
    rms = float(norms.square().mean().sqrt())
    if rms == 0.0 or not math.isfinite(rms):
        return torch.ones_like(norms)
    return 1.0 / norms.clamp_min(COLUMN_FLOOR * rms)


def group_scaling(norms: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``D`` constant within each group of columns (block-Jacobi by layer): ``1 / rms`` of the
    group's estimated column norms, so every group's columns have unit norm on average.

    One number per group averages the Hutchinson noise of hundreds of columns away, and it
    rescales layers against each other without favouring the single parameters of low
    curvature inside a layer, which the full column scaling moves most. Scale invariant as
    ``column_scaling``; an all-zero group keeps scale 1.
    """
    groups = groups.to(device=norms.device, dtype=torch.long)
    count = torch.zeros(int(groups.max()) + 1, dtype=norms.dtype, device=norms.device)
    count.index_add_(0, groups, torch.ones_like(norms))
    power = torch.zeros_like(count).index_add_(0, groups, norms * norms)
    rms = (power / count.clamp_min(1)).sqrt()
    scale = torch.where(rms > 0, 1.0 / rms.clamp_min(torch.finfo(norms.dtype).tiny),
                        torch.ones_like(rms))
    return scale[groups]


def scale_columns(A: LinearOperator, scale: torch.Tensor) -> LinearOperator:
    """``A · diag(scale)``: ``x ↦ A (scale ⊙ x)`` and ``u ↦ scale ⊙ Aᵀu``, at ``A``'s HVP cost
    (counted on the scaled operator from zero). A symmetric ``A`` scaled on one side is not
    symmetric: MINRES cannot take it.
    """
    return LinearOperator(
        A.shape,
        lambda x: A._matvec(scale * x),
        lambda u: scale * A._rmatvec(u),
        hvps_per_matvec=A.hvps_per_matvec,
        hvps_per_rmatvec=A.hvps_per_rmatvec,
    )


def neumann(
    A: LinearOperator,
    rhs: torch.Tensor,
    *,
    damp: float = 0.0,
    relative_damp: float = 0.0,
    tol: float = 1e-4,
    max_iter: int = 100,
    sigma: float | None = None,
    power_iters: int = 10,
    safety: float | None = None,
    patience: int = 3,
    seed: int = 0,
    stagnation_window: int = STAGNATION_WINDOW,
    callback: Callback | None = None,
    should_stop: ShouldStop | None = None,
) -> SolveResult:
    """The paper's scale-invariant series (method.md E7) on the normal equations of ``A``.

    With ``N = AᵀA + λ² I``: ``x₀ = Aᵀr/σ²``, ``x_{t+1} = Aᵀr/σ² + (I − N/σ²) x_t``, which
    converges when every eigenvalue of ``N/σ²`` lies in (0, 2), i.e. ``σ² > λ_max(N)/2``. Unless
    ``sigma`` is given, ``σ² = safety · λ̂`` with ``λ̂`` from ``power_iters`` power iterations
    seeded by ``seed`` (their HVPs are counted) and ``safety = NEUMANN_MARGIN / 2``: the spec's
    bound with a margin for λ̂'s shortfall, measured on the benchmark's operators (see
    ``NEUMANN_MARGIN``). A larger σ² converges in proportionally more iterations.

    The normal residual of a convergent series never grows in exact arithmetic, but in float32
    it wiggles at the rounding floor; a plateau there ends the solve as ``stagnation``. It is
    *divergence* (``SolverDiverged``, ``details["stop_reason"] = "diverged"``) only when it is
    non-finite or stays above ``DIVERGENCE_GROWTH`` × its best value for ``patience``
    consecutive iterations: real growth, not noise.
    """
    _check_damping(damp, relative_damp)
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    monitor = _Monitor(
        "neumann", A, rhs, tol=tol, max_iter=max_iter, callback=callback,
        should_stop=should_stop, stagnation_window=stagnation_window,
        damped=damp > 0 or relative_damp > 0,
    )
    x = torch.zeros(A.shape[1], dtype=rhs.dtype, device=rhs.device)
    if monitor.rhs_norm == 0.0:
        return monitor.result(x, 0, 0.0, 0.0, "zero_rhs")
    At_rhs = A.rmatvec(rhs)
    At_rhs_norm = _norm(At_rhs)
    _require_finite("neumann", At_rhs_norm)
    if At_rhs_norm == 0.0:
        return monitor.result(x, 0, 1.0, 0.0, "rhs_orthogonal_to_range")
    damp, extra = _damping(damp, relative_damp, gain=At_rhs_norm / monitor.rhs_norm)
    lambda_max = None
    if sigma is None:
        lambda_max = normal_lambda_max(
            A, damp=damp, iterations=power_iters, seed=seed, like=rhs, should_stop=should_stop
        )
        sigma2 = (NEUMANN_MARGIN / 2 if safety is None else safety) * lambda_max
    else:
        sigma2 = float(sigma) ** 2
    extra.update(sigma=math.sqrt(max(sigma2, 0.0)), lambda_max_estimate=lambda_max)
    if not sigma2 > 0.0:
        raise SolverDiverged(
            "the normal operator AᵀA is zero: no σ makes the series converge",
            details={**extra, "stop_reason": "diverged"},
        )
    gradient = -At_rhs  # N x − Aᵀ r at x = 0
    damp2 = damp * damp
    best, above = 1.0, 0  # x₀ = 0 has normal residual 1
    residual = normal_residual = math.nan
    for iteration in range(1, max_iter + 1):
        monitor.check_cancel(iteration - 1)
        x = x - gradient / sigma2  # x_t = Aᵀr/σ² + (I − N/σ²) x_{t−1}
        misfit = A.matvec(x) - rhs
        gradient = A.rmatvec(misfit) + damp2 * x
        residual = _relative(_norm(misfit), monitor.rhs_norm)
        normal_residual = _relative(_norm(gradient), At_rhs_norm)
        above = above + 1 if normal_residual > DIVERGENCE_GROWTH * best else 0
        if not math.isfinite(normal_residual) or above >= patience:
            raise SolverDiverged(
                f"the Neumann series diverged at iteration {iteration} (normal residual "
                f"{normal_residual:.3g}, best {best:.3g}, σ = {math.sqrt(sigma2):.3g}): "
                f"σ² is below λ_max(AᵀA)/2",
                details={
                    **extra,
                    "stop_reason": "diverged",
                    "iteration": iteration,
                    "normal_residual": _json_float(normal_residual),
                    "best_normal_residual": best,
                    "history": monitor.history[-5:],
                },
            )
        best = min(best, normal_residual)
        reason = monitor.record(iteration, residual, normal_residual, x)
        if reason is not None:
            return monitor.result(x, iteration, residual, normal_residual, reason, **extra)
    return monitor.result(x, max_iter, residual, normal_residual, "max_iter", **extra)


SOLVERS = {"lsqr": lsqr, "cg": cgls, "minres": minres, "neumann": neumann}
ESTIMATES_CONDITION = frozenset({"lsqr", "minres"})
"""Algorithms with a running condition estimate, which take ``conlim``."""
SEEDED = frozenset({"neumann"})
"""Algorithms that draw random numbers (Neumann's power iteration); the others are deterministic."""


def solve(
    algorithm: str, A: LinearOperator, rhs: torch.Tensor, *, seed: int | None = None, **kwargs
) -> SolveResult:
    """Dispatch on ``"lsqr"`` | ``"cg"`` | ``"minres"`` | ``"neumann"`` (``solver.algorithm``).

    ``seed`` reaches the algorithms that draw random numbers (``SEEDED``) and is ignored by the
    deterministic ones; every other keyword goes to the algorithm.
    """
    try:
        solver = SOLVERS[algorithm]
    except KeyError:
        raise ValueError(f"unknown solver {algorithm!r}; choose one of {sorted(SOLVERS)}") from None
    if seed is not None and algorithm in SEEDED:
        kwargs["seed"] = seed
    return solver(A, rhs, **kwargs)
