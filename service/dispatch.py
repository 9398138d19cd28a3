"""How a queued job reaches a worker. The job row is the source of truth; a dispatcher only
says "job X is waiting". Cancel goes through the database (``cancel_requested``), not here.

Runners (``Settings.effective_runner``): ``local`` — :class:`service.runners.local.LocalRunner`,
a thread in the API process and one job process (the embedded default); ``celery`` —
:class:`service.runners.celery.CeleryDispatcher`, a broker message per job; ``none`` —
:class:`NoneDispatcher`, jobs stay queued (tests, or an API node whose workers poll
elsewhere)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from service.settings import Settings


@runtime_checkable
class Dispatcher(Protocol):
    """What the API needs from a job runner.

    ``in_process``: True when a submitted job cannot be lost between the commit of its row and
    ``submit`` in a way the reaper would repair (the runner lives in the API process and takes
    over every ``queued`` row when it starts): the row is then inserted with ``enqueued_at``
    set, in the submission's one commit (``service.jobs.submit``). A broker's dispatcher says
    False: its mark is written after the broker took the message."""

    in_process: bool

    def submit(self, job_id: str) -> None:
        """Hand a committed, queued job to the runner (must not block on the job itself)."""

    def ready(self) -> bool:
        """Whether jobs submitted now can run (e.g. the broker is reachable)."""

    def close(self) -> None:
        """Release threads and connections at shutdown."""


class NoneDispatcher:
    """Runner ``none``: accepts nothing for execution; jobs stay ``queued``."""

    in_process = True

    def __init__(self) -> None:
        self.submitted: list[str] = []

    def submit(self, job_id: str) -> None:
        self.submitted.append(job_id)

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        return None


def make_dispatcher(settings: Settings) -> Dispatcher:
    """The dispatcher for ``settings.effective_runner`` (imported lazily: the API process
    of a Celery deployment never imports the local runner, and vice versa)."""
    runner = settings.effective_runner
    if runner == "none":
        return NoneDispatcher()
    if runner == "local":
        from service.runners.local import LocalRunner

        return LocalRunner(settings)
    from service.runners.celery import CeleryDispatcher

    return CeleryDispatcher(settings)
