"""THE edit function: the CLI, the worker and the experiments all call ``run_edit``.

One call edits one model: validate the request against the data, sample the edited points
``U`` and the Hessian data (method.md E1), select the parameters that move (paper §4), build the
right-hand side (E1), solve for ``Δ_S`` (E2–E8) while the regularisation path (E9) scores the
candidates ``(k, α)`` — the solver's iterate ``x_k`` and the step ``α`` — on a validation split
held out of the training data and stops the solve once the best has stopped improving, and
measure everything before and after. The input state
dict is never mutated; the output is a fresh full state dict with the same keys and dtypes.

Data bookkeeping (all seeded by ``request.seed``; indices into the train dataset ``D``):

- ``E``: every edited point (the class, or the request's indices); ``m = |E|``, ``N = |D|``.
- ``U ⊂ E``: ``solver.edit_samples`` of them, the points whose gradients form ``b`` (E1).
- ``D \\ E`` is shuffled and cut into the *validation split* (``step.validation_fraction``,
  at most ``MAX_VALIDATION`` points, used only by the path; none for ``step.mode = fixed``)
  and the *pool*; the Hessian sample (``solver.hessian_samples``)
  comes from the pool (removal: ``H`` of the retained data) or from the pool plus ``E`` with
  the corrected labels (relabel: ``H`` of the corrected data). So ``α`` is never tuned on
  points the Hessian saw, nor on any evaluation set.
"""

from gif.edit.files import edit_from_files
from gif.edit.hooks import EditHooks, EditOutcome, LoadedModel, Progress
from gif.edit.plan import IndexPlan, plan_indices
from gif.edit.result import per_layer_changes
from gif.edit.run import run_edit
from gif.edit.validate import resolve_device, validate_request
from gif.errors import GifError
from gif.request import PHASES, REMOVAL_KINDS, RESERVED_SET_NAMES
from gif.step import ScaleCurve

__all__ = [
    "PHASES", "REMOVAL_KINDS", "RESERVED_SET_NAMES", "EditHooks", "EditOutcome", "GifError",
    "IndexPlan", "LoadedModel", "Progress", "ScaleCurve", "edit_from_files", "per_layer_changes",
    "plan_indices", "resolve_device", "run_edit", "validate_request",
]
