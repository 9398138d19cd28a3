"""The one way the API process runs periodic work (the reaper, the retention sweeper): a daemon
thread that runs a pass every ``interval_s`` until closed. A failing pass is logged and the next
one retries, so a database or broker outage never ends the loop."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger("gif.background")


class PeriodicThread:
    """``first()`` once at start (if given), then ``every()`` every ``interval_s`` (if given)."""

    def __init__(self, name: str, interval_s: float, every: Callable[[], object] | None,
                 first: Callable[[], object] | None = None):
        self.name, self.interval_s, self.every, self.first = name, interval_s, every, first
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run_pass(self, work: Callable[[], object]) -> None:
        try:
            work()
        except Exception:  # an outage: the next pass retries
            logger.warning("%s: pass failed", self.name, exc_info=True)

    def _loop(self) -> None:
        if self.first is not None:
            self._run_pass(self.first)
        if self.every is None:
            return
        while not self._stop.wait(self.interval_s):
            self._run_pass(self.every)

    def start(self) -> PeriodicThread:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
