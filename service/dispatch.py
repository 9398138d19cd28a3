"""How a queued job reaches a worker. The job row is the source of truth; a dispatcher only
says "job X is waiting". Cancel goes through the database (``cancel_requested``), not here.

Runners (``Settings.effective_runner``): ``local`` — :class:`worker.local.LocalRunner`, threads in
the API process (the embedded default); ``celery`` — :class:`worker.celery_app.CeleryDispatcher`,
a broker message per job; ``none`` — :class:`NoneDispatcher`, jobs stay queued (tests, or an API
node whose workers poll elsewhere)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import Job, utcnow
from service.settings import Settings


@runtime_checkable
class Dispatcher(Protocol):
    """What the API needs from a job runner."""

    def submit(self, job_id: str) -> None:
        """Hand a committed, queued job to the runner (must not block on the job itself)."""

    def ready(self) -> bool:
        """Whether jobs submitted now can run (e.g. the broker is reachable)."""

    def close(self) -> None:
        """Release threads and connections at shutdown."""


class NoneDispatcher:
    """Runner ``none``: accepts nothing for execution; jobs stay ``queued``."""

    def __init__(self) -> None:
        self.submitted: list[str] = []

    def submit(self, job_id: str) -> None:
        self.submitted.append(job_id)

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        return None


def mark_enqueued(factory: sessionmaker[Session], job_id: str) -> bool:
    """Record that ``job_id``'s message was handed to the runner (``enqueued_at``), so the
    reaper does not send it again. Conditional: only a ``queued`` row not yet marked (the
    reaper may have sent it first); True when this call marked it."""
    with factory() as session:
        rows = session.execute(
            sa.update(Job)
            .where(Job.id == job_id, Job.status == "queued", Job.enqueued_at.is_(None))
            .values(enqueued_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount
        session.commit()
    return rows == 1


def make_dispatcher(settings: Settings) -> Dispatcher:
    """The dispatcher for ``settings.effective_runner`` (imported lazily: the API process
    of a Celery deployment never imports the local runner, and vice versa)."""
    runner = settings.effective_runner
    if runner == "none":
        return NoneDispatcher()
    if runner == "local":
        from worker.local import LocalRunner

        return LocalRunner(settings)
    from worker.celery_app import CeleryDispatcher

    return CeleryDispatcher(settings)
