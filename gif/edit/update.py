"""The GIF-family update: parameter selection (paper §4) and the E1–E8 solve for ``Δ_S``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from gif.edit.hooks import Progress, Reporter
from gif.edit.plan import EditData, IndexPlan
from gif.errors import InvalidRequest, NonFinite
from gif.request import (
    AUTO_SCALING_EARLIEST,
    AUTO_SCALING_FAR_FROM,
    AUTO_SCALING_FAR_SCALE,
    AUTO_SCALING_ITERATION,
    SCALINGS,
    SYMMETRIC_ALGORITHMS,
    EditRequest,
    Solver,
)

if TYPE_CHECKING:
    from gif.methods import EditSolution
    from gif.step import RegularisationPath


def select_target(request: EditRequest, model: nn.Module, space, data: EditData,
                  reporter: Reporter):
    """Paper §4 selection on the edit sample ``U`` → flat indices of ``S`` and a summary; a
    cancel (``reporter.should_stop``) is seen between scoring batches.

    IF (E2) moves every parameter, so it skips selection.
    """
    if request.method == "if":
        indices = torch.arange(space.size)
        return indices, {"criterion": None, "ratio": 1.0, "num_selected": space.size}
    from gif.selection import select_parameters

    targets = data.u_new_y if data.u_new_y is not None else data.u_y
    selection = select_parameters(
        model, data.u_x, targets, criterion=request.selection.criterion,
        ratio=request.selection.ratio, threshold=request.selection.threshold,
        seed=request.seed, batch_size=request.solver.batch_size,
        should_stop=reporter.should_stop,
    )
    indices = space.indices(selection.masks)
    if len(indices) == 0:
        raise InvalidRequest(f"the selection ratio {request.selection.ratio} selects no parameter "
                             f"in any layer; raise selection.ratio", loc=("selection", "ratio"))
    info = {"criterion": request.selection.criterion, "ratio": request.selection.ratio,
            "num_selected": int(len(indices)), "num_eligible": selection.num_eligible,
            "_per_layer": selection.per_layer}
    return indices, info


@dataclass(frozen=True)
class EditSystem:
    """E1's right-hand side ``b`` (its norm) and E6's HVP of the Hessian sample: what every
    solve of one edit shares (``preconditioner: auto`` solves it twice)."""

    b: torch.Tensor
    b_norm: float
    hvp: object


def edit_system(request: EditRequest, model: nn.Module, data: EditData, plan: IndexPlan,
                reporter: Reporter) -> EditSystem:
    """E1 right-hand side on ``U`` and the HVP of ``H`` on the Hessian sample."""
    from gif.hvp import make_hvp, mean_loss_grad
    from gif.methods import check_solver, relabel_rhs, removal_rhs

    check_solver(request.method, request.solver)  # before any gradient work
    batch_size, should_stop = request.solver.batch_size, reporter.should_stop
    m, n = len(plan.edited), plan.num_train
    grad_old = mean_loss_grad(model, data.u_x, data.u_y, batch_size=batch_size,
                              should_stop=should_stop)
    if data.u_new_y is None:
        b = removal_rhs(grad_old, m, n)
    else:
        grad_new = mean_loss_grad(model, data.u_x, data.u_new_y, batch_size=batch_size,
                                  should_stop=should_stop)
        b = relabel_rhs(grad_new, grad_old, m, n)
    # b = 0 exactly (e.g. every edited point is fitted with a saturated softmax, whose gradient
    # underflows to 0) is no error: Δ = 0 solves it, and the solver returns that at once
    # (stop_reason "zero_rhs", no HVP). The edit goes on with a zero update.
    # run_edit adds the result warning "zero_rhs".
    hvp = make_hvp(model, data.h_x, data.h_y, batch_size=batch_size, should_stop=should_stop)
    return EditSystem(b=b, b_norm=float(torch.linalg.vector_norm(b)), hvp=hvp)


def solve_update(request: EditRequest, system: EditSystem, indices: torch.Tensor,
                 reporter: Reporter, on_iterate=None, solver_cfg: Solver | None = None,
                 progress_offset: Callable[[], int] = lambda: 0):
    """The E2–E5 solve of ``system`` with ``solver_cfg`` (default: the request's).

    ``on_iterate(iteration, delta, hvps)`` sees each iterate's update (the solver's own tensor:
    clone to keep it) and the HVPs spent so far; returning True stops the solve (E9's path,
    ``stop_reason = "callback"``).
    ``progress_offset()``: the iterations of the edit's other solves so far, which the
    progress counts on from (a second solve does not send the progress bar back to 0)."""
    from gif.methods import solve_edit

    solver_cfg = request.solver if solver_cfg is None else solver_cfg
    max_iter = solver_cfg.max_iter

    def on_iteration(info: dict) -> bool:
        offset = progress_offset()
        reporter.progress(Progress(
            "solve", offset + int(info.get("iteration", 0)),
            offset + int(info.get("max_iter", max_iter)), info.get("residual")))
        return on_iterate is not None and on_iterate(int(info["iteration"]), info["delta"],
                                                     int(info["hvps"]))

    b = system.b
    solution = solve_edit(request.method, system.hvp, b, indices.to(b.device),
                          solver_cfg=solver_cfg, callback=on_iteration,
                          should_stop=reporter.should_stop, seed=request.seed)
    if not bool(torch.isfinite(solution.delta).all()):
        raise NonFinite("the solver returned a non-finite update")
    return solution


@dataclass
class PathSolve:
    """One solve along the regularisation path (E9): its solution and scored path, the
    scaling it solved with, and whether it stopped to hand over to the scaled solve
    (``preconditioner: auto``)."""

    preconditioner: str
    solution: EditSolution
    path: RegularisationPath
    handed_over: bool

    @property
    def objective(self) -> float:
        """The best validation objective of its scored ``(k, α)``."""
        return self.path.best.curve.best.objective

    def to_json(self) -> dict:
        result = self.solution.result
        return {"preconditioner": self.preconditioner, "iterations": result.iterations,
                "hvps": result.hvps, "stop_reason": result.stop_reason,
                "handed_over": self.handed_over, **path_report(self.path)}


def path_report(path: RegularisationPath) -> dict:
    """An attempt's path as ``solver.scaling`` reports it: its best iterate and objective, and
    each scored iterate's best over α (the path figure draws the attempt not kept beside the
    kept one, so the choice can be seen)."""
    return {"best_iteration": path.best.iteration, "objective": path.best.curve.best.objective,
            "iterates": [{"iteration": point.iteration, "scale": point.curve.best.scale,
                          "objective": point.curve.best.objective} for point in path.iterates]}


def hands_over(request: EditRequest) -> bool:
    """Whether ``preconditioner: auto`` may hand a slow unscaled path over to the scaled solve:
    only where a column scaling applies (not MINRES) and a path chooses (step.mode auto)."""
    return (request.solver.preconditioner == "auto" and request.step.mode == "auto"
            and request.solver.algorithm not in SYMMETRIC_ALGORITHMS)


def slow_path(path: RegularisationPath, iteration: int, method: str) -> bool:
    """``preconditioner: auto`` (E8): whether an unscaled path of ``method`` that E9 would go on
    solving hands over at its scored iterate ``iteration``: from ``AUTO_SCALING_FAR_FROM`` (per
    method) on when the iterate's best α is ``AUTO_SCALING_FAR_SCALE`` or more (the unscaled
    update far too short);
    from ``AUTO_SCALING_EARLIEST`` on when the iterate just raised the score (it is the path's
    new reference); and at ``AUTO_SCALING_ITERATION`` whatever the score did."""
    if iteration >= AUTO_SCALING_ITERATION:
        return True
    far = path.iterates[-1].curve.scale >= AUTO_SCALING_FAR_SCALE
    if far and iteration >= AUTO_SCALING_FAR_FROM[method]:
        return True
    return iteration >= AUTO_SCALING_EARLIEST and path.reference is path.iterates[-1]


HandOver = Callable[["RegularisationPath", int, int], bool]
"""``hand_over(path, iteration, hvps)``: called once, at the scored iterate where an unscaled
path is ``slow_path``, while that solve waits (``hvps``: its HVPs so far); True stops it."""


def path_solve(request: EditRequest, system: EditSystem, indices: torch.Tensor,
               reporter: Reporter, path: RegularisationPath, solver_cfg: Solver,
               hand_over: HandOver | None = None,
               progress_offset: Callable[[], int] = lambda: 0) -> PathSolve:
    """Solve with ``path`` scoring the iterates and stopping the solve (E9). With
    ``hand_over``, at the first scored iterate at which the path would go on and ``slow_path``
    says it is converging too slowly, ``hand_over`` runs (the other scaling's solve, inside
    this one's iteration, so that this solve can go on from where it is); True stops this
    solve there, False lets it go on to E9's own stop without asking again."""
    handed_over = False

    def on_iterate(iteration: int, delta: torch.Tensor, hvps: int) -> bool:
        nonlocal handed_over
        if not path.wants(iteration):
            return False
        if path.observe(iteration, delta.detach().clone()):
            return True
        if hand_over is None or handed_over or not slow_path(path, iteration, request.method):
            return False
        handed_over = True
        return hand_over(path, iteration, hvps)

    solution = solve_update(request, system, indices, reporter, on_iterate, solver_cfg,
                            progress_offset)
    returned = int(solution.result.extra.get("returned_iteration", solution.result.iterations))
    scored = {point.iteration for point in path.iterates}
    if returned not in scored and solution.result.stop_reason != "callback":
        # the solve stopped on its own between scored iterates (or at once, b = 0): its
        # returned solution is a candidate too
        path.observe(returned, solution.delta)
    scaling = solver_cfg.preconditioner if solver_cfg.preconditioner in SCALINGS else "none"
    return PathSolve(scaling, solution, path, handed_over)


def solve_on_paths(request: EditRequest, system: EditSystem, indices: torch.Tensor,
                   reporter: Reporter, new_path) -> tuple[PathSolve, dict | None]:
    """The path's solve (E9) and, for ``preconditioner: auto``, the choice of scaling (E8):
    the unscaled solve first; if its path is still improving (``slow_path``: its best α far
    past the grid from ``AUTO_SCALING_FAR_FROM`` on, its score rising from
    ``AUTO_SCALING_EARLIEST`` on, or at ``AUTO_SCALING_ITERATION``) the column-scaled
    problem is solved there, on a path of its own, while the unscaled solve waits at that
    iterate; the attempt with the better validation objective is kept (ties: the unscaled one).
    When the unscaled one is, its solve goes on from where it waited to E9's own stop, so the
    edit is exactly the unscaled one (``none``) and no iteration is solved twice. Returns the
    kept attempt and, for ``auto``, what the result reports of the choice (``solver.scaling``):
    the unscaled attempt as it was at the hand-over, the scaled one, and, when the unscaled
    one was solved on, that whole solve with ``resumed_from`` (the iteration it waited at)."""
    if request.solver.preconditioner != "auto":
        return path_solve(request, system, indices, reporter, new_path(), request.solver), None
    scaled: list[PathSolve] = []  # the column-scaled attempt, once the unscaled one hands over
    waited: dict = {}  # the unscaled attempt as it was when it handed over

    def scaling_won() -> bool:  # ties keep the unscaled attempt
        return scaled[0].objective > waited["objective"]

    def solve_scaled(path: RegularisationPath, iteration: int, hvps: int) -> bool:
        waited.update(preconditioner="none", iterations=iteration, hvps=hvps,
                      stop_reason="callback", handed_over=True, **path_report(path))
        reporter.event("info", "solve", (
            f"the unscaled path was still improving at iteration {iteration}: solving the "
            "column-scaled problem too"), {"objective": waited["objective"]})
        columns = request.solver.model_copy(update={"preconditioner": "columns"})
        scaled.append(path_solve(request, system, indices, reporter, new_path(), columns,
                                 progress_offset=lambda: iteration))
        if scaling_won():
            return True
        reporter.event("info", "solve", (
            f"the unscaled path scored higher: solving it on from iteration {iteration}"),
            {"objective": waited["objective"]})
        return False

    def scaled_iterations() -> int:  # what the waiting solve's progress counts on from
        return scaled[0].solution.result.iterations if scaled else 0

    first = path_solve(request, system, indices, reporter, new_path(), request.solver,
                       solve_scaled if hands_over(request) else None, scaled_iterations)
    if not scaled:
        return first, {"mode": "auto", "chosen": "none", "attempts": [first.to_json()],
                       "hvps_all_solves": first.solution.result.hvps}
    reports = [waited, scaled[0].to_json()]
    kept = scaled[0] if scaling_won() else first
    if kept is first:
        reports.append({**first.to_json(), "handed_over": False,
                        "resumed_from": waited["iterations"]})
    return kept, {"mode": "auto", "chosen": kept.preconditioner, "attempts": reports,
                  "hvps_all_solves": first.solution.result.hvps + scaled[0].solution.result.hvps}
