"""The alternatives users would pick instead of GIF (method.md E10), as edit methods.

``finetune``, ``gradient_ascent``, ``random_labels``, ``salun``, ``l1_sparse`` and ``retrain``
are short training loops on the training data the edit is given. They run under the same
request (``EditRequest.method`` and its ``training`` block, whose unset fields take the
published recipes of ``gif.request.RECIPES``), the same job lifecycle (progress, events,
cancellation) and the same metrics as GIF, so jobs on one model compare side by side:

- ``gif.unlearning.loop``: the one seeded training loop (optimizer, batch order, time budget,
  progress, cancel, non-finite checks) and the batches it draws;
- ``gif.unlearning.baselines``: one function per method (``METHODS``);
- ``gif.unlearning.run``: ``run_training_edit``, which ``gif.edit.run_edit`` dispatches to.

Call ``gif.edit.run_edit(request, model, train, eval_sets, hooks)`` with ``method`` set to one
of them, or ``run_training_edit`` directly (same arguments).
"""

from gif.unlearning.baselines import METHODS, MethodOutcome
from gif.unlearning.loop import TrainingLoop, TrainingPoints, TrainingRun
from gif.unlearning.run import run_training_edit

__all__ = ["METHODS", "MethodOutcome", "TrainingLoop", "TrainingPoints", "TrainingRun",
           "run_training_edit"]
