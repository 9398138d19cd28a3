"""The seeded training loop every method.md E10 method runs, and the batches it draws.

One loop for all six methods, so they differ only in what they train on and what they minimise:
the optimizer is built from the request's ``training`` block, the batch order (and the random
labels) come from one ``torch.Generator`` seeded with ``request.seed``, the model is in train
mode (BatchNorm statistics follow the training data, as in the recipes), and each step reports
progress, checks for cancellation, refuses a non-finite loss and checks the time budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from gif.edit.hooks import Progress, Reporter
from gif.errors import NonFinite
from gif.request import Training

Batch = tuple[torch.Tensor, torch.Tensor]
# The objective of one step: (model, x, y, fraction of the schedule done) → a scalar loss.
Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor, float], torch.Tensor]
HISTORY_POINTS = 200  # the loss history kept in the result: enough for a figure, never huge


@dataclass(frozen=True)
class EpochPlan:
    """The batches of one epoch (``batches(epoch)``) and how many there are."""

    batches: Callable[[int], Iterator[Batch]]
    steps_per_epoch: int
    description: str


@dataclass
class TrainingRun:
    """What the loop did: steps, epochs (fractional when a budget stopped it mid-epoch), the
    seconds of its clock, which bound stopped it, and the loss of every step."""

    clock: str
    steps: int = 0
    epochs: float = 0.0
    seconds: float = 0.0
    stopped_by: str = "epochs"
    losses: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps, "epochs_done": round(self.epochs, 4),
                "seconds": round(self.seconds, 4), "clock": self.clock,
                "stopped_by": self.stopped_by, "epoch_losses": self.epoch_losses,
                "loss_history": loss_history(self.losses)}


def loss_history(losses: list[float], points: int = HISTORY_POINTS) -> list[dict[str, float]]:
    """``[{step, loss}]``: every step's loss, or means over equal windows of steps when there
    are more than ``points`` (``step`` is then the window's last step)."""
    window = max(1, math.ceil(len(losses) / points))
    return [{"step": min(start + window, len(losses)),
             "loss": float(np.mean(losses[start:start + window]))}
            for start in range(0, len(losses), window)]


class LoopClock:
    """Seconds used by the loop: process CPU time on the CPU, wall time on CUDA (whose kernels
    run outside the process's CPU time); each step's ``loss.item()`` synchronises CUDA."""

    def __init__(self, device: torch.device):
        self.name = "cuda_wall" if device.type == "cuda" else "process_cpu"
        self._now = time.perf_counter if device.type == "cuda" else time.process_time
        self._start = self._now()

    def elapsed(self) -> float:
        return self._now() - self._start


def make_optimizer(training: Training, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """``torch.optim.SGD`` / ``Adam`` with the recipe's constant lr, weight decay, momentum."""
    if training.optimizer == "adam":
        return torch.optim.Adam(params, lr=training.lr, weight_decay=training.weight_decay)
    return torch.optim.SGD(params, lr=training.lr, momentum=training.momentum or 0.0,
                           weight_decay=training.weight_decay)


class FrozenEntries:
    """Keep the entries outside a mask exactly where they started (salun's saliency mask):
    their gradients are zeroed before each step and their values restored after it, so
    neither weight decay nor momentum can move them."""

    def __init__(self, model: nn.Module, movable: dict[str, torch.Tensor]):
        params = dict(model.named_parameters())
        self._entries = [(params[name], mask.to(params[name].device),
                          params[name].detach().clone())
                         for name, mask in movable.items() if not bool(mask.all())]

    def mask_gradients(self) -> None:
        for param, mask, _ in self._entries:
            if param.grad is not None:
                param.grad.mul_(mask)

    @torch.no_grad()
    def restore(self) -> None:
        for param, mask, start in self._entries:
            param.copy_(torch.where(mask, param, start))


@dataclass
class TrainingLoop:
    """The loop of one edit: its recipe, the caller's reporter, the device and the seeded
    generator that orders every batch and draws every random label."""

    training: Training
    reporter: Reporter
    device: torch.device
    generator: torch.Generator
    method: str
    seed: int

    def run(self, model: nn.Module, plan: EpochPlan, objective: Objective,
            frozen: FrozenEntries | None = None) -> TrainingRun:
        """Minimise ``objective`` over ``plan``'s batches until ``epochs`` or ``budget_s``."""
        training = self.training
        with self.reporter.phase("train"):
            model.train()
            optimizer = make_optimizer(training, [p for p in model.parameters()
                                                  if p.requires_grad])
            total = plan.steps_per_epoch * training.epochs if training.epochs else None
            self.reporter.event("info", "train", f"{self.method}: {plan.description}", {
                "steps_per_epoch": plan.steps_per_epoch, "epochs": training.epochs,
                "budget_s": training.budget_s, "max_steps": total})
            clock = LoopClock(self.device)
            run = TrainingRun(clock=clock.name)
            epoch = 0
            while training.epochs is None or epoch < training.epochs:
                stopped = self._epoch(model, plan, objective, frozen, optimizer, clock, run,
                                      epoch, total)
                if stopped:
                    break
                epoch += 1
            run.seconds = clock.elapsed()
            if run.stopped_by == "budget_s":
                self.reporter.event("info", "train", (
                    f"the time budget ({training.budget_s:g} s, {clock.name}) stopped the "
                    f"training after {run.steps} steps ({run.epochs:.3g} epochs)"),
                    {"steps": run.steps, "epochs_done": run.epochs, "seconds": run.seconds})
            model.eval()
        return run

    def _epoch(self, model, plan: EpochPlan, objective: Objective, frozen, optimizer,
               clock: LoopClock, run: TrainingRun, epoch: int, total: int | None) -> bool:
        """One epoch; True when the time budget stopped the loop inside it."""
        training = self.training
        done = 0
        for x, y in plan.batches(epoch):
            self.reporter.check_cancel()
            value = self._step(model, objective, frozen, optimizer, x, y,
                               self._fraction(epoch, clock), run.steps + 1, epoch + 1)
            run.steps += 1
            run.losses.append(value)
            done += 1
            self.reporter.progress(Progress("train", run.steps, total))
            last = total is not None and run.steps == total  # the epochs end here anyway
            if training.budget_s is not None and not last \
                    and clock.elapsed() >= training.budget_s:
                run.stopped_by = "budget_s"
                run.epochs = epoch + done / plan.steps_per_epoch
                self._epoch_event(run, epoch, done, clock,
                                  partial=done < plan.steps_per_epoch)
                return True
        run.epochs = epoch + 1
        self._epoch_event(run, epoch, done, clock, partial=False)
        return False

    def _step(self, model: nn.Module, objective: Objective, frozen: FrozenEntries | None,
              optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              fraction: float, step: int, epoch: int) -> float:
        """One optimizer step on one batch; its loss, refused when it is not finite."""
        loss = objective(model, x.to(self.device), y.to(self.device), fraction)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFinite(
                f"the {self.method} training loss became {value} at step {step} (epoch "
                f"{epoch}): the recipe diverged; lower training.lr (now {self.training.lr:g})",
                details={"step": step, "epoch": epoch, "loss": str(value)})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if frozen is not None:
            frozen.mask_gradients()
        optimizer.step()
        if frozen is not None:
            frozen.restore()
        return value

    def _fraction(self, epoch: int, clock: LoopClock) -> float:
        """How much of the schedule is done, for schedules such as l1_sparse's decay: whole
        epochs over ``epochs`` (constant within an epoch, as the recipe), else the budget."""
        if self.training.epochs:
            return epoch / self.training.epochs
        return min(clock.elapsed() / self.training.budget_s, 1.0)

    def _epoch_event(self, run: TrainingRun, epoch: int, steps: int, clock: LoopClock,
                     partial: bool) -> None:
        """One event per epoch with its mean loss (a partial epoch's is not an epoch loss)."""
        mean = float(np.mean(run.losses[-steps:])) if steps else None
        if not partial and mean is not None:
            run.epoch_losses.append(mean)
        of = f"/{self.training.epochs}" if self.training.epochs else ""
        loss = f": mean loss {mean:.4g}" if mean is not None else ""
        self.reporter.event("info", "train", f"epoch {epoch + 1}{of}"
                            f"{' (partial)' if partial else ''}{loss}",
                            {"epoch": epoch + 1, "steps": run.steps, "loss": mean,
                             "partial": partial, "seconds": round(clock.elapsed(), 4)})


# --- batches ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingPoints:
    """The training dataset as the methods see it: raw rows prepared per batch (never all at
    once), the original labels and, for relabel, the corrected ones."""

    x: torch.Tensor
    labels: torch.Tensor  # N, original
    corrected: torch.Tensor | None  # N, with the relabel applied
    retained: np.ndarray  # D \ E, sorted
    forgotten: np.ndarray  # E, sorted
    prepare: Callable[[torch.Tensor], torch.Tensor]
    num_classes: int

    def inputs(self, idx: np.ndarray) -> torch.Tensor:
        return self.prepare(self.x[torch.as_tensor(idx, dtype=torch.long)])

    def fitted(self) -> tuple[np.ndarray, torch.Tensor]:
        """The data a retrained model fits: the retained points (removal) or every point with
        the corrected labels (relabel)."""
        if self.corrected is None:
            return self.retained, self.labels
        return np.arange(len(self.labels)), self.corrected


def shuffled_epochs(points: TrainingPoints, idx: np.ndarray, labels: torch.Tensor,
                    batch_size: int, generator: torch.Generator, what: str) -> EpochPlan:
    """Each epoch a fresh permutation of ``idx`` (``torch.randperm`` on ``generator``), cut into
    consecutive batches of ``batch_size``, the last one possibly smaller."""

    def batches(_epoch: int) -> Iterator[Batch]:
        order = torch.randperm(len(idx), generator=generator)
        for chunk in order.split(batch_size):
            rows = idx[chunk.numpy()]
            yield points.inputs(rows), labels[torch.as_tensor(rows)]

    steps = math.ceil(len(idx) / batch_size)
    return EpochPlan(batches, steps, f"{len(idx):,} {what} in {steps} batches per epoch")


def random_wrong_labels(labels: torch.Tensor, num_classes: int,
                        generator: torch.Generator) -> torch.Tensor:
    """A label drawn uniformly among the *other* classes for each point (method.md E10: random
    wrong labels; the SalUn code draws among all classes, so 1/C of its labels are right)."""
    shift = torch.randint(1, num_classes, labels.shape, generator=generator)
    return (labels + shift) % num_classes


def mixed_epochs(points: TrainingPoints, forget_labels: Callable[[np.ndarray], torch.Tensor],
                 retain_share: float | None, batch_size: int,
                 generator: torch.Generator) -> EpochPlan:
    """The random-labels data (E10): the retained points with their labels and the forgotten
    points with ``forget_labels`` (drawn afresh each epoch), shuffled together. By default each
    forgotten point appears once an epoch; with ``retain_share`` s the forgotten points are
    drawn (cycling through fresh permutations) ``|R| (1 − s) / s`` times, so a batch holds a
    share s of retained points on average."""
    retained, forgotten = points.retained, points.forgotten
    if retain_share is None:
        draws = len(forgotten)
    else:
        draws = max(1, round(len(retained) * (1.0 - retain_share) / retain_share))
    retained_labels = points.labels[torch.as_tensor(retained)]

    def batches(_epoch: int) -> Iterator[Batch]:
        cycles = math.ceil(draws / len(forgotten))
        picks = torch.cat([torch.randperm(len(forgotten), generator=generator)
                           for _ in range(cycles)])[:draws]
        chosen = forgotten[picks.numpy()]
        idx = np.concatenate([retained, chosen])
        labels = torch.cat([retained_labels, forget_labels(chosen)])
        order = torch.randperm(len(idx), generator=generator)
        for chunk in order.split(batch_size):
            yield points.inputs(idx[chunk.numpy()]), labels[chunk]

    steps = math.ceil((len(retained) + draws) / batch_size)
    return EpochPlan(batches, steps, f"{len(retained):,} retained points mixed with {draws:,} "
                                     f"draws of the {len(forgotten):,} edited points in {steps} "
                                     f"batches per epoch")
