"""The caller's hooks and the types ``run_edit`` takes and returns, and the reporter that
times phases and relays progress, events and cancellation."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from gif.edit.result import json_clean
from gif.errors import Cancelled
from gif.spec import ModelSpec


@dataclass(frozen=True)
class LoadedModel:
    """A model as the engine receives it: its spec and its (CPU) state dict."""

    spec: ModelSpec
    state_dict: Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Progress:
    """Where the edit is: the phase, and inside ``solve`` the solver's iteration and residual."""

    phase: str
    iteration: int | None = None
    max_iter: int | None = None
    residual: float | None = None


@dataclass(frozen=True)
class EditHooks:
    """Callbacks of the caller; each optional.

    ``progress(Progress)``; ``event(level, phase, message, data)`` for the job's event log;
    ``should_cancel() -> bool``, polled between phases and solver iterations (→ ``Cancelled``).
    """

    progress: Callable[[Progress], None] | None = None
    event: Callable[[str, str, str, dict], None] | None = None
    should_cancel: Callable[[], bool] | None = None


@dataclass(frozen=True)
class EditOutcome:
    """The edited full state dict (CPU) and the JSON-able result (api.md job ``result``)."""

    state_dict: dict[str, torch.Tensor]
    result: dict[str, Any]


class Reporter:
    """Phase timings, progress, events and cancellation, all through the caller's hooks."""

    def __init__(self, hooks: EditHooks):
        self.hooks = hooks
        self.timings: dict[str, float] = {}

    def should_stop(self) -> bool:
        return bool(self.hooks.should_cancel and self.hooks.should_cancel())

    def check_cancel(self) -> None:
        if self.should_stop():
            raise Cancelled("the edit was cancelled")

    def progress(self, progress: Progress) -> None:
        if self.hooks.progress:
            self.hooks.progress(progress)

    def event(self, level: str, phase: str, message: str, data: dict | None = None) -> None:
        if self.hooks.event:
            self.hooks.event(level, phase, message, json_clean(data or {}))

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.check_cancel()
        self.progress(Progress(name))
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - started, 4)
        self.check_cancel()

