"""The job row's one owner: every change of a ``jobs`` row (and its events) is made here.

- :mod:`service.jobs.submit` — validation on stored metadata (no torch), idempotent insert,
  hand-over to the runner and the ``enqueued_at`` mark;
- :mod:`service.jobs.state` — the state machine fenced by attempt: claim, heartbeat, progress,
  terminal writes, and :func:`~service.jobs.state.cancel_job`, the one cancel;
- :mod:`service.jobs.events` — the one event writer;
- :mod:`service.jobs.reaper` — the reaper's decisions for lost runs and unsent jobs.

Routes (``service.api.jobs``), the Celery task, the local runner and the reaper thread only
call these. Database only: nothing here imports torch or the engine."""
