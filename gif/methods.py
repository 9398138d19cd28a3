"""The edit methods (method.md E1–E5) as right-hand sides and linear operators built from HVPs.

Every method solves a (least-squares) linear system with a solver of ``gif.solvers``:

====== ============================ ================================ ==================
method operator (E6 HVPs)            right-hand side                  what moves
====== ============================ ================================ ==================
gif    ``H[:,S]``  (p × k)          ``−b``                           ``S``   (E3)
fif    ``H[S,S]``  (k × k)          ``−b_S``                         ``S``   (E4)
if     ``H``       (p × p)          ``−b``                           all θ   (E2)
pif    ``H``       (p × p)          ``−b``, then keep ``S``          ``S``   (E5)
====== ============================ ================================ ==================

Each operator's product and transposed product cost one HVP each (E6), so one iteration of
LSQR / CG / the Neumann series costs two HVPs whichever method is used. The square operators
(FIF, IF, PIF) are symmetric, so MINRES (E8) solves them with one HVP per iteration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from gif.errors import InvalidRequest
from gif.params import scatter
from gif.request import SCALINGS, Solver, check_solver
from gif.solvers import (
    ESTIMATES_CONDITION,
    Callback,
    LinearOperator,
    ShouldStop,
    SolveResult,
    column_norms,
    column_scaling,
    group_scaling,
    scale_columns,
    solve,
)

METHODS = ("gif", "fif", "pif", "if")

HessianProduct = Callable[[torch.Tensor], torch.Tensor]


def removal_rhs(grad_forget_mean: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """E1, removal: ``b = −ε ∇ mean_U L``, ``ε = m / (N − m)``.

    ``grad_forget_mean`` is the mean-loss gradient over the ``m`` removed points of ``N``.
    """
    if not 0 < m < n:
        raise InvalidRequest(
            f"removal needs 0 < m < N removed points, got m={m}, N={n}", loc=("edit",)
        )
    return -(m / (n - m)) * grad_forget_mean


def relabel_rhs(
    grad_new_mean: torch.Tensor, grad_old_mean: torch.Tensor, m: int, n: int
) -> torch.Tensor:
    """E1, relabel: ``b = (m / N) (∇ mean_U L(x, y') − ∇ mean_U L(x, y))``."""
    if not 0 < m <= n:
        raise InvalidRequest(
            f"relabel needs 0 < m <= N edited points, got m={m}, N={n}", loc=("edit",)
        )
    return (m / n) * (grad_new_mean - grad_old_mean)


def method_operator(
    method: str, hvp: HessianProduct, selected: torch.Tensor, p: int
) -> LinearOperator:
    """The operator of ``method`` on the flat θ ∈ R^p with target indices ``selected`` (E2–E6).

    - gif: ``H[:,S] v = H · pad_S(v)`` and ``H[:,S]ᵀ u = (H u)_S`` (E6).
    - fif: ``H[S,S] v = (H · pad_S(v))_S`` (symmetric).
    - if / pif: ``H`` itself (symmetric).
    """
    if method == "gif":
        return LinearOperator(
            (p, selected.numel()),
            lambda v: hvp(scatter(v, selected, p)),
            lambda u: hvp(u)[selected],
        )
    if method == "fif":

        def principal_block(v: torch.Tensor) -> torch.Tensor:
            return hvp(scatter(v, selected, p))[selected]

        k = selected.numel()
        return LinearOperator((k, k), principal_block, principal_block, symmetric=True)
    if method in ("if", "pif"):
        return LinearOperator((p, p), hvp, hvp, symmetric=True)
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def method_rhs(method: str, b: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """The right-hand side ``r`` of ``min ‖A Δ − r‖``: ``−b``, or ``−b_S`` for FIF (E2–E5)."""
    return -b[selected] if method == "fif" else -b


@dataclass
class EditSolution:
    """``θ[indices] ← θ[indices] + α · delta`` (E9), and how the solve went."""

    method: str
    indices: torch.Tensor
    delta: torch.Tensor
    result: SolveResult


def check_selection(selected: torch.Tensor, p: int) -> torch.Tensor:
    """Selected flat indices as a sorted, unique int64 vector inside [0, p)."""
    selected = torch.as_tensor(selected).reshape(-1).long()
    if selected.numel() == 0:
        raise InvalidRequest(
            "no parameter is selected: raise selection.ratio", loc=("selection", "ratio")
        )
    if int(selected.min()) < 0 or int(selected.max()) >= p:
        raise ValueError(f"selected indices must lie in [0, {p})")
    unique = torch.unique(selected)
    if unique.numel() != selected.numel():
        raise ValueError("selected indices must be unique")
    return unique


def iterate_delta(method: str, x: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """The update ``Δ`` that a solver iterate ``x`` stands for: ``x_S`` for PIF (E5), else ``x``."""
    return x[selected] if method == "pif" else x


def _with_delta(callback: Callback | None, method: str, selected: torch.Tensor,
                scale: torch.Tensor | None):
    """``callback`` with ``info["delta"]`` added (None stays None: no per-iteration work); a
    column-scaled solve's iterate is ``y``, and the update is that of ``x = scale ⊙ y``."""
    if callback is None:
        return None

    def relay(info: dict):
        x = info["x"] if scale is None else scale * info["x"]
        return callback({**info, "delta": iterate_delta(method, x, selected)})

    return relay


def layer_of(columns: torch.Tensor, offsets: tuple[int, ...]) -> torch.Tensor:
    """The layer (parameter tensor) of each flat index in ``columns``, from the space's
    ``offsets`` (sorted starts of the tensors in θ)."""
    starts = torch.tensor(offsets, dtype=torch.long, device=columns.device)
    return torch.bucketize(columns, starts, right=True) - 1


def precondition(
    operator: LinearOperator, solver_cfg: Solver, *, seed: int | None,
    like: torch.Tensor, layer_groups: Callable[[], torch.Tensor],
    should_stop: ShouldStop | None = None,
) -> tuple[LinearOperator, torch.Tensor | None, dict]:
    """``solver.preconditioner`` (E8): the operator to solve with, the column scale ``D`` that
    maps its iterates back (``x = D y``; None: no scaling) and what the result reports.

    ``columns`` scales ``A`` to ``A·D`` with ``D = 1/‖A[:,j]‖`` estimated by
    ``preconditioner_probes`` Hutchinson probes (one HVP each, counted in ``hvps``); ``layers``
    uses one scale per parameter tensor (``layer_groups()``: the tensor of each column). The
    solver's minimiser is unchanged where it is unique; its early iterates, which the path
    chooses among (E9), are those of the better-conditioned problem.
    """
    if solver_cfg.preconditioner not in SCALINGS:  # none; auto decides per edit (gif.edit.run)
        return operator, None, {}
    probes = solver_cfg.preconditioner_probes
    norms = column_norms(operator, probes=probes, seed=0 if seed is None else seed,
                         like=like, should_stop=should_stop)
    if solver_cfg.preconditioner == "layers":
        scale = group_scaling(norms, layer_groups())
    else:
        scale = column_scaling(norms)
    spread = float(norms.max() / norms.clamp_min(1e-30).min()) if norms.numel() else 1.0
    return scale_columns(operator, scale), scale, {
        "preconditioner": solver_cfg.preconditioner, "preconditioner_hvps": operator.hvps,
        "column_norm_spread": spread}


def solver_options(solver_cfg: Solver) -> dict:
    """The keyword arguments of ``gif.solvers.solve`` that ``solver_cfg`` stands for.

    ``solver.damping`` is relative (``relative_damp``): ``λ = damping · ‖Aᵀr‖/‖r‖``, so a damped
    GIF is still invariant to scaling the loss (E3, Prop. 1 i).
    """
    options = {
        "relative_damp": solver_cfg.damping,
        "tol": solver_cfg.tol,
        "max_iter": solver_cfg.max_iter,
        "stagnation_window": solver_cfg.stagnation_window,
    }
    if solver_cfg.algorithm in ESTIMATES_CONDITION:
        options["conlim"] = solver_cfg.conlim
    return options


def _offsets(hvp: HessianProduct, p: int) -> tuple[int, ...]:
    """Where each parameter tensor starts in θ: ``gif.hvp.HVP`` knows its space; a bare
    product (tests) counts as one tensor."""
    space = getattr(hvp, "space", None)
    return tuple(space.offsets) if space is not None and space.size == p else (0,)


def solve_edit(
    method: str,
    hvp: HessianProduct,
    b: torch.Tensor,
    selected: torch.Tensor,
    *,
    solver_cfg: Solver,
    callback: Callback | None = None,
    should_stop: ShouldStop | None = None,
    seed: int | None = None,
) -> EditSolution:
    """Solve one edit (E2–E5) with the solver of ``solver_cfg`` (E7/E8), damping included.

    ``hvp`` applies ``H`` (``gif.hvp.make_hvp``), ``b`` is E1's right-hand side (length p) and
    ``selected`` the flat indices of ``S``. The update moves ``indices`` (all of θ for ``"if"``)
    by ``delta``. ``seed`` (the job's seed) draws the start of Neumann's power iteration; the
    other algorithms are deterministic. A zero ``b`` is solved by ``delta = 0`` at once
    (``stop_reason = "zero_rhs"``, no HVP).

    ``callback(info)`` sees every iterate: besides the solver's keys (``iteration``,
    ``residual``, ``normal_residual``, ``hvps``, ``max_iter``, ``x``) it gets ``info["delta"]``,
    the update that iterate means (``x[S]`` for PIF, ``x`` otherwise; clone it to keep it).
    Returning ``True`` stops the solve with ``stop_reason = "callback"``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    check_solver(method, solver_cfg)
    b = b.reshape(-1)
    p = b.numel()
    selected = check_selection(selected, p).to(b.device)
    def layer_groups() -> torch.Tensor:  # only a layer scaling needs it
        square = method in ("if", "pif")  # H itself: its columns are all of θ
        columns = torch.arange(p, device=b.device) if square else selected
        return layer_of(columns, _offsets(hvp, p))

    operator, scale, preconditioned = precondition(
        method_operator(method, hvp, selected, p), solver_cfg, seed=seed, like=b,
        layer_groups=layer_groups, should_stop=should_stop)
    result = solve(
        solver_cfg.algorithm,
        operator,
        method_rhs(method, b, selected),
        seed=seed,
        callback=_with_delta(callback, method, selected, scale),
        should_stop=should_stop,
        **solver_options(solver_cfg),
    )
    if preconditioned:  # back from y to x = D y; the probes' HVPs are part of the cost
        result.x = scale * result.x
        result.hvps += preconditioned["preconditioner_hvps"]
        result.extra.update(preconditioned)
    indices = torch.arange(p, device=b.device) if method == "if" else selected
    delta = iterate_delta(method, result.x, selected)
    return EditSolution(method=method, indices=indices, delta=delta, result=result)
