"""The progress bar of an edit on a terminal: the ``gif edit`` command's (fed by the engine's
``Progress`` hook) and the service CLI's (fed by a job's polled ``progress``), one class for both.

One tqdm bar per phase. A phase that iterates (the solve: ``max_iter`` > 0) counts
``iteration/max_iter`` with the residual alongside; any other phase shows its name and time.
What it takes care of (issue 13.6):

- attaching to a phase already under way starts the bar at the current iteration (tqdm's
  ``initial``), so the iterations done before are not counted as speed (no absurd it/s, no
  ETA 00:00);
- a poller can miss an iterating phase's last iterations (the job moved on between two polls):
  when the phase ends, ``final_count(phase)`` (if given) supplies the true final count, and the
  bar is closed at it, never on a stale 99/100 (:meth:`finish` does the same for the phase a
  job ended in);
- a phase's first report may come before its count is known: the bar switches then.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import IO, Any, Protocol


class ProgressLike(Protocol):
    phase: str | None
    iteration: int | None
    max_iter: int | None
    residual: float | None


class PhaseProgress:
    """Callable with each new progress value; ``label`` prefixes every bar (e.g. a job id);
    ``final_count(phase)``: the true final iteration of an iterating phase that just ended, or
    None when unknown."""

    PHASE_FORMAT = "{desc} [{elapsed}]"  # phases without iterations: name and time only

    def __init__(self, label: str = "", file: IO[str] | None = None, enabled: bool = True,
                 final_count: Callable[[str | None], int | None] | None = None):
        self.label = label
        self.enabled = enabled
        self._file = file
        self._final_count = final_count
        self._bar: Any = None  # the current phase's tqdm bar
        self._phase: str | None = None
        self._iterates = False

    def __call__(self, progress: ProgressLike) -> None:
        if not self.enabled:
            return
        iterates = bool(progress.max_iter)
        if self._bar is None or (progress.phase, iterates) != (self._phase, self._iterates):
            self._new_bar(progress, iterates)
        bar = self._bar
        if progress.residual is not None:
            bar.set_postfix(residual=f"{progress.residual:.3g}", refresh=False)
        if not iterates or progress.iteration is None:
            bar.refresh()
            return
        if bar.total != progress.max_iter:
            bar.total = progress.max_iter
        if progress.iteration < bar.n:
            bar.reset(total=bar.total)  # the phase started over (e.g. a second solve)
        if progress.iteration > bar.n:
            bar.update(progress.iteration - bar.n)  # draws (mininterval=0)
        else:
            bar.refresh()

    def _new_bar(self, progress: ProgressLike, iterates: bool) -> None:
        from tqdm import tqdm  # only when drawing: importing this module stays cheap

        bar = self._bar
        if (bar is not None and self._iterates and self._final_count is not None
                and bar.n < (bar.total or 0)):  # ended short of max_iter: its true count?
            self._end_at(self._final_count(self._phase))
        self.close()
        self._phase, self._iterates = progress.phase, iterates
        self._bar = tqdm(
            total=progress.max_iter if iterates else None,
            # Attaching mid-phase: the iterations already done are not this bar's speed.
            initial=(progress.iteration or 0) if iterates else 0,
            desc=f"{self.label} {progress.phase or 'queued'}".strip(),
            unit="it",
            file=self._file if self._file is not None else sys.stderr,
            mininterval=0,  # every report is a new value worth drawing
            dynamic_ncols=True,
            bar_format=None if iterates else self.PHASE_FORMAT,
        )

    def write(self, line: str) -> None:
        """A message that does not break the bars."""
        from tqdm import tqdm

        tqdm.write(line, file=self._file if self._file is not None else sys.stderr)

    def finish(self, final_iterations: Mapping[str, int] | None = None) -> None:
        """Close the bar; if it is an iterating phase named in ``final_iterations``, at that
        count (the true one, which the last report may have missed)."""
        if self._bar is not None and self._iterates:
            self._end_at((final_iterations or {}).get(self._phase or ""))
        self.close()

    def _end_at(self, final: int | None) -> None:
        bar = self._bar
        if isinstance(final, int) and not isinstance(final, bool) and final >= 0 and bar.total:
            bar.total = max(bar.total, final)
            bar.n = final
            bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._phase, self._iterates = None, None, False
