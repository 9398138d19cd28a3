"""The GIF-family update: parameter selection (paper §4) and the E1–E8 solve for ``Δ_S``."""

from __future__ import annotations

import torch
from torch import nn

from gif.edit.hooks import Progress, Reporter
from gif.edit.plan import EditData, IndexPlan
from gif.errors import InvalidRequest, NonFinite
from gif.request import EditRequest


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


def solve_update(request: EditRequest, model: nn.Module, space, indices: torch.Tensor,
                 data: EditData, plan: IndexPlan, reporter: Reporter, on_iterate=None):
    """E1 right-hand side on ``U`` and the E2–E5 solve with ``H`` of the Hessian sample.

    ``on_iterate(iteration, delta)`` sees each iterate's update (the solver's own tensor: clone
    to keep it); returning True stops the solve (E9's path, ``stop_reason = "callback"``)."""
    from gif.hvp import make_hvp, mean_loss_grad
    from gif.methods import check_solver, relabel_rhs, removal_rhs, solve_edit

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
    b_norm = float(torch.linalg.vector_norm(b))
    # b = 0 exactly (e.g. every edited point is fitted with a saturated softmax, whose gradient
    # underflows to 0) is no error: Δ = 0 solves it, and the solver returns that at once
    # (stop_reason "zero_rhs", no HVP). The edit goes on with a zero update.
    # run_edit adds the result warning "zero_rhs".
    hvp = make_hvp(model, data.h_x, data.h_y, batch_size=batch_size, should_stop=should_stop)
    max_iter = request.solver.max_iter

    def on_iteration(info: dict) -> bool:
        reporter.progress(Progress("solve", int(info.get("iteration", 0)),
                                   int(info.get("max_iter", max_iter)), info.get("residual")))
        return on_iterate is not None and on_iterate(int(info["iteration"]), info["delta"])

    solution = solve_edit(request.method, hvp, b, indices.to(b.device),
                          solver_cfg=request.solver, callback=on_iteration,
                          should_stop=should_stop, seed=request.seed)
    if not bool(torch.isfinite(solution.delta).all()):
        raise NonFinite("the solver returned a non-finite update")
    return solution, b_norm

