"""The distributed runner's worker side: the Celery app whose one task, ``gif.run_job``, calls
:func:`worker.jobs.execute_job` (configuration and the API's dispatcher:
:mod:`service.runners.celery`).

The worker's parent process never touches CUDA before it forks its pool child (``gif-service
worker`` preloads the engine's modules only). The child warms up when it starts, before it
takes its first message (``worker_process_init``: :func:`worker.process.warm_up` opens its
database connection and prepares the engine), is reused for up to ``MAX_TASKS_PER_CHILD``
messages and frees its caches (GPU included) after every job; a message for a job already
cancelled or ended costs one database read on that open connection."""

from __future__ import annotations

import logging

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import worker_process_init, worker_process_shutdown

from service.jobs.state import fail_unfinished_job, needs_run
from service.runners.celery import (
    DB_RETRY_COUNTDOWN_S,
    DB_RETRY_MAX,
    RUN_JOB_TASK,
    celery_app_for,
)
from service.settings import Settings
from worker.process import close_resources, resources, warm_up

logger = logging.getLogger(__name__)


class JobTask(Task):
    """``gif.run_job``'s task class: a hard time limit kills the pool child without a chance to
    write anything, so the worker's parent process fails the job ``timeout`` here instead."""

    settings: Settings | None = None

    def on_failure(self, exc, task_id, args, kwargs, einfo):  # noqa: D401 - Celery hook
        if isinstance(exc, TimeLimitExceeded) and args and self.settings is not None:
            fail_unfinished_job(
                args[0],
                self.settings,
                code="timeout",
                message=f"the job ran past its time limit ({self.settings.job_time_limit_s:g} s)",
            )


def job_needs_run(settings: Settings, job_id: str) -> bool:
    """:func:`service.jobs.state.needs_run` on this process's engine (its connection stays
    open between messages)."""
    return needs_run(resources(settings).factory, job_id)


def make_celery_app(settings: Settings) -> Celery:
    """The Celery app on ``settings.broker_url`` with the ``gif.run_job`` task registered, and
    the pool child's warm-up (at its start) and connection close (at its exit)."""
    app = celery_app_for(settings)

    def warm_up_child(**_):
        warm_up(settings)

    def close_child(**_):
        close_resources()

    worker_process_init.connect(warm_up_child, weak=False, dispatch_uid="gif.warm_up")
    worker_process_shutdown.connect(close_child, weak=False, dispatch_uid="gif.close")

    @app.task(
        name=RUN_JOB_TASK, base=JobTask, bind=True, settings=settings, max_retries=DB_RETRY_MAX
    )
    def run_job(self, job_id: str) -> None:
        """Run one job; every outcome (incl. a soft time limit) is written to its row. When the
        database cannot be reached the message is retried later instead of being dropped."""
        from sqlalchemy.exc import OperationalError

        from worker.jobs import execute_job  # imports torch: only inside the pool child

        try:
            if not job_needs_run(settings, job_id):
                return  # cancelled or ended: one read, no engine work (the child is reused)
            execute_job(job_id, settings, timeout_errors=(SoftTimeLimitExceeded,))
        except OperationalError as exc:
            logger.warning("job %s: database unavailable, retrying the task", job_id)
            raise self.retry(exc=exc, countdown=DB_RETRY_COUNTDOWN_S) from exc

    return app
