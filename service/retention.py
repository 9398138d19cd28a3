"""Retention (docs/erasure.md; settings ``GIF_RETENTION_JOB_S``,
``GIF_RETENTION_UPLOAD_S``, ``GIF_RETENTION_INTERVAL_S``): the operator's limits, applied by
a sweep that erases old objects exactly as a ``DELETE`` does (``service.erasure.erase``), each
with an erasure record whose ``reason`` is ``retention`` and whose key is None.

- a terminal job whose end is older than ``retention_job_s`` is erased (request, result,
  events, metrics; its edited model is a model and follows the next rule);
- a model or dataset (uploaded, or produced by a job) that no queued or running job uses, and
  that neither was created nor used by any job within ``retention_upload_s``, is erased.

The sweep runs in a daemon thread of every API process (started by the app's lifespan),
beside the reaper; without a limit the thread only removes, once at start, stored files that
no row references (a crash's leftovers) and ends. Replicas may race on one object: the second
erasure finds it gone (404) and skips it. Objects are judged by the database's records only
(``created_at``, the jobs' ``created_at``/``finished_at``), never by file times."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service.background import PeriodicThread
from service.db.models import TERMINAL_STATUSES, Dataset, Job, Model, utcnow
from service.erasure import (
    ACTIVE_STATUSES,
    INPUT_COLUMNS,
    erase,
    row_inputs,
    sweep_unreferenced,
)
from service.problems import ProblemError
from service.settings import Settings
from service.storage import ArtifactStore

logger = logging.getLogger(__name__)


@dataclass
class RetentionReport:
    """What one sweep erased, as ``(kind, id)``."""

    erased: list[tuple[str, str]] = field(default_factory=list)


def _expired_jobs(session: Session, cutoff: datetime) -> list[tuple[str, str]]:
    """``(owner_id, job_id)`` of terminal, not yet erased jobs that ended before ``cutoff``."""
    ended = sa.func.coalesce(Job.finished_at, Job.created_at)
    return [(r.owner_id, r.id) for r in session.execute(
        sa.select(Job.owner_id, Job.id).where(
            Job.status.in_(TERMINAL_STATUSES), Job.deleted_at.is_(None), ended < cutoff
        ).order_by(ended)
    )]


def _last_uses(session: Session) -> tuple[dict[str, datetime], set[str]]:
    """When each stored object was last used by a job, and which ones an active job uses."""
    last: dict[str, datetime] = {}
    active: set[str] = set()
    rows = session.execute(sa.select(Job.status, Job.created_at, Job.finished_at,
                                     *INPUT_COLUMNS))
    for row in rows:
        used_at = row.finished_at or row.created_at
        for object_id in row_inputs(row):
            if row.status in ACTIVE_STATUSES:
                active.add(object_id)
            if object_id not in last or used_at > last[object_id]:
                last[object_id] = used_at
    return last, active


def _unused_objects(session: Session, cutoff: datetime) -> list[tuple[str, str, str]]:
    """``(kind, owner_id, id)`` of live models and datasets created before ``cutoff`` that no
    job used since and no active job uses."""
    last, active = _last_uses(session)
    found = []
    for kind, entity in (("model", Model), ("dataset", Dataset)):
        rows = session.execute(
            sa.select(entity.id, entity.owner_id).where(
                entity.deleted_at.is_(None), entity.created_at < cutoff
            ).order_by(entity.created_at)
        )
        for row in rows:
            if row.id not in active and (row.id not in last or last[row.id] < cutoff):
                found.append((kind, row.owner_id, row.id))
    return found


def _erase_quietly(factory: sessionmaker[Session], store: ArtifactStore, kind: str,
                   owner_id: str, object_id: str, now: datetime) -> bool:
    try:
        erase(factory, store, kind, owner_id, object_id, reason="retention", now=now)
    except ProblemError as err:  # gone meanwhile (another replica), or in use since
        logger.info("retention: %s %s skipped: %s", kind, object_id, err.detail)
        return False
    return True


def sweep_retention(factory: sessionmaker[Session], store: ArtifactStore, settings: Settings,
                    now: datetime | None = None) -> RetentionReport:
    """One pass of both rules at time ``now`` (tests pass a clock; default: the time now).
    Jobs go first, so an edited model whose job just expired is judged by its own age."""
    now = now or utcnow()
    report = RetentionReport()
    if settings.retention_job_s is not None:
        with factory() as session:
            jobs = _expired_jobs(session, now - timedelta(seconds=settings.retention_job_s))
        for owner_id, job_id in jobs:
            if _erase_quietly(factory, store, "job", owner_id, job_id, now):
                report.erased.append(("job", job_id))
    if settings.retention_upload_s is not None:
        with factory() as session:
            unused = _unused_objects(session, now - timedelta(seconds=settings.retention_upload_s))
        for kind, owner_id, object_id in unused:
            if _erase_quietly(factory, store, kind, owner_id, object_id, now):
                report.erased.append((kind, object_id))
    if report.erased:
        logger.info("retention: erased %d object(s)", len(report.erased))
    return report


@dataclass
class RetentionSweeper:
    """Runs :func:`sweep_retention` every ``settings.retention_interval_s`` in a daemon thread
    (and, once at start, removes stored files no row references: a crash's leftovers)."""

    factory: sessionmaker[Session]
    store: ArtifactStore
    settings: Settings
    _thread: PeriodicThread | None = None

    def start(self) -> RetentionSweeper:
        limits = (self.settings.retention_job_s, self.settings.retention_upload_s)
        every = None if limits == (None, None) else (  # no limits: the start-up sweep only
            lambda: sweep_retention(self.factory, self.store, self.settings))
        self._thread = PeriodicThread(
            "gif-retention", self.settings.retention_interval_s, every,
            first=lambda: sweep_unreferenced(self.factory, self.store)).start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._thread.close(timeout)


def maybe_start_retention(settings: Settings, factory: sessionmaker[Session],
                          store: ArtifactStore) -> RetentionSweeper:
    """Start the sweeper: the start-up sweep of unreferenced files always, the retention
    sweeps when the operator set a limit."""
    return RetentionSweeper(factory, store, settings).start()
