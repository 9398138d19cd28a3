"""Operations: multi-step flows (pagination, waiting for a job, catching up on events) written
once as generators that yield calls and sleeps; each client drives them with its own IO."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from service.client.calls import _Call, _Calls, _Operation, _Page, _Sleep
from service.client.errors import WaitTimeoutError
from service.client.models import Job, JobEvent, JobProgress

T = TypeVar("T")



def _paginate(page_call: Callable[[str | None], _Call[_Page[T]]]) -> _Operation[list[T]]:
    """Every item over all pages, following the cursor: the page's ``next_cursor`` (it stays
    valid when the item it names is deleted or leaves a filter, docs/api.md Limits), else the last
    id seen."""
    items: list[T] = []
    after: str | None = None
    while True:
        page: _Page[T] = yield page_call(after)
        items.extend(page.items)
        if not page.has_more or not page.items:
            return items
        after = page.next_cursor or page.items[-1].id  # type: ignore[attr-defined]


def _wait_for_job(
    job_id: str,
    on_progress: Callable[[JobProgress], Any] | None,
    poll_interval: float,
    timeout: float | None,
    clock: Callable[[], float] = time.monotonic,
) -> _Operation[Job]:
    """Poll the job until it is terminal; report each new progress value to ``on_progress``."""
    deadline = None if timeout is None else clock() + timeout
    last_progress: JobProgress | None = None
    while True:
        job: Job = yield _Calls.get_job(job_id)
        progress = job.reported_progress
        if on_progress is not None and progress is not None and progress != last_progress:
            last_progress = progress
            on_progress(progress)
        if job.is_terminal:
            return job
        if deadline is not None and clock() >= deadline:
            raise WaitTimeoutError(
                f"job {job_id} is still {job.status} after {timeout:g} s", job=job
            )
        pause = poll_interval if deadline is None else min(poll_interval, deadline - clock())
        yield _Sleep(max(pause, 0.0))


def _poll_new_events(job_id: str, after_seq: int) -> _Operation[tuple[list[JobEvent], bool]]:
    """Events past ``after_seq`` and whether the job had ended before they were read."""
    job: Job = yield _Calls.get_job(job_id)
    events: list[JobEvent] = yield _Calls.list_events(job_id, after_seq)
    return [event for event in events if event.seq > after_seq], job.is_terminal


