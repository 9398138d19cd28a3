"""The API side of the distributed runner: the Celery configuration both ends share and
:class:`CeleryDispatcher`, which sends ``gif.run_job`` by name. Imports neither torch nor the
engine nor the task's code (``worker.celery_app`` holds the task; it runs in the workers).

Delivery is at-least-once and the job row is the truth, so the options below make a redelivery
rare and harmless:

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a job whose worker dies is delivered
  again (``execute_job`` then re-runs it once, or fails it ``worker_lost``);
- ``worker_prefetch_multiplier=1``, concurrency 1: one job per worker process (one worker per
  GPU), and no second job waits behind a long one on a busy worker;
- the hard time limit stays strictly below the broker's ``visibility_timeout``, so Redis never
  hands a job that is still running to a second worker;
- ``task_ignore_result``: the database, not a result backend, holds outcomes."""

from __future__ import annotations

import logging

import redis
from celery import Celery

from service.settings import Settings

RUN_JOB_TASK = "gif.run_job"
# A hard-limit kill comes this long after the soft limit (which fails the job cleanly), at most.
HARD_LIMIT_GRACE_S = 60.0
# A task that found the database down is retried this much later, up to DB_RETRY_MAX times.
DB_RETRY_COUNTDOWN_S = 10
DB_RETRY_MAX = 60
# A pool child runs this many messages before it is replaced: no process start per message
# (0.5-5 s on a loaded machine, even for a cancelled job), a bound on what a leak in one job's
# libraries can accumulate; GPU memory is freed after each job (worker.jobs.release_memory).
MAX_TASKS_PER_CHILD = 50
# A new pool child warms up (worker.process.warm_up: its connection, the engine) before it
# reports ready; Celery's default 4 s for that is tight on a loaded machine.
PROC_ALIVE_TIMEOUT_S = 60.0

logger = logging.getLogger(__name__)


def time_limits(settings: Settings) -> tuple[float, float]:
    """``(soft, hard)`` task time limits: the soft one is ``job_time_limit_s`` (the job fails
    ``timeout``); the hard one a grace period later, strictly below the visibility timeout."""
    soft = float(settings.job_time_limit_s)
    visibility = float(settings.broker_visibility_timeout_s or soft + 3600.0)
    grace = min(HARD_LIMIT_GRACE_S, (visibility - soft) / 2.0)
    return soft, soft + grace


def celery_config(settings: Settings) -> dict:
    """The Celery configuration derived from the settings (see the module docstring)."""
    soft, hard = time_limits(settings)
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": {"visibility_timeout": settings.broker_visibility_timeout_s},
        "broker_connection_retry_on_startup": True,
        "task_default_queue": settings.job_queue,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "task_ignore_result": True,
        "task_store_errors_even_if_ignored": False,
        "task_soft_time_limit": soft,
        "task_time_limit": hard,
        "task_serializer": "json",
        "accept_content": ["json"],
        # A submit must not hang the API when Redis is down: fail fast, the job stays queued.
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 1.0,
        },
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": 1,
        "worker_max_tasks_per_child": MAX_TASKS_PER_CHILD,
        "worker_proc_alive_timeout": PROC_ALIVE_TIMEOUT_S,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "enable_utc": True,
    }


def celery_app_for(settings: Settings) -> Celery:
    """A Celery app on ``settings.broker_url`` configured as above, with no task registered:
    enough to send tasks by name and to ping workers."""
    if not settings.broker_url:
        raise ValueError("the Celery runner needs GIF_BROKER_URL (a Redis URL)")
    app = Celery("gif_service", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


class CeleryDispatcher:
    """The API side of the distributed mode: sends ``gif.run_job`` by name (no torch import)."""

    in_process = False  # a message can be lost: marked enqueued after the broker took it

    def __init__(self, settings: Settings):
        self._app = celery_app_for(settings)
        self._queue = settings.job_queue
        self._redis = redis.Redis.from_url(
            settings.broker_url, socket_connect_timeout=1.0, socket_timeout=1.0
        )

    def submit(self, job_id: str) -> None:
        """Queue ``job_id``. The job row already exists; a lost message is recovered by
        re-submitting (``execute_job`` ignores a job that is not queued)."""
        self._app.send_task(RUN_JOB_TASK, args=[job_id], queue=self._queue)

    def ready(self) -> bool:
        """Whether the broker (Redis) answers a ping within a second."""
        try:
            return bool(self._redis.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        self._redis.close()
        self._app.close()
