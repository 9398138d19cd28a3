"""The periodic thread behind the reaper and the retention sweeper."""

from __future__ import annotations

import threading

from service.background import PeriodicThread


def test_a_failing_pass_is_logged_and_the_next_one_still_runs(caplog):
    passes, enough = [], threading.Event()

    def flaky() -> None:
        passes.append(1)
        if len(passes) == 1:
            raise RuntimeError("database outage")
        if len(passes) >= 3:
            enough.set()

    loop = PeriodicThread("test-loop", 0.01, flaky).start()
    try:
        assert enough.wait(5.0)
    finally:
        loop.close()
    assert "test-loop: pass failed" in caplog.text
    count = len(passes)
    threading.Event().wait(0.05)
    assert len(passes) == count  # closed: no pass after close()


def test_first_runs_once_and_without_every_the_thread_ends():
    calls = []
    loop = PeriodicThread("test-once", 0.01, None, first=lambda: calls.append("first")).start()
    loop._thread.join(5.0)
    assert not loop._thread.is_alive() and calls == ["first"]
    loop.close()
