"""Deletion is erasure (docs/erasure.md): the one owner of how a model, a dataset
or a job is erased, of the reference count that decides when stored bytes go, and of the
check that no job starts on something erased.

- :func:`erase` marks the object deleted, refuses (409 naming the job) while a queued or
  running job uses it — as its model, train set, evaluation set or holdout set
  (:func:`job_inputs`) — and writes its :class:`~service.db.models.Erasure` record, all in ONE
  transaction; then :func:`release_content` removes the file once no live artifact row holds
  its sha256 (content-addressed: two objects with the same bytes share one file).
- A job is erased in place: its request (the forgotten indices), result, progress, events
  and metrics go; the row stays as a tombstone so the edited model keeps its
  ``source_job_id``. The edited model is a model of its own and stays.

Why delete and submit cannot race (issue 11): a job's inputs are checked when it is
claimed, in the claim's own transaction (:func:`erased_input`, called by
``service.jobs.state.claim_job``), and a job found using something erased fails ``input_deleted``.
The two transactions are ordered by the object's row: the deletion's first statement is the
conditional UPDATE that marks the row deleted (a row lock on PostgreSQL, the database's write
lock on SQLite), and only then does it look for active jobs; the claim first moves the job
to ``running``, then reads the inputs with ``FOR SHARE``. Either the deletion commits first
and the claim (waiting on the row lock) sees it deleted, or the claim commits first and the
deletion sees a running job and answers 409. A submission that slips in between a deletion's
check and its commit is a ``queued`` job that the claim then fails. The claim-time check was
chosen over locking at submission because it also covers the reaper's re-sends and any future
path that queues a job, and it costs one indexed read per input per job.

Reference counting: the file ``<sha>`` goes when no :class:`Artifact` row with that sha256
is live (``erased_at`` NULL). Counting and unlinking happen under :func:`lock_content`, and
an upload indexes its file under the same lock and checks it is still there
(:func:`check_published`), so an upload of identical bytes racing a deletion never ends up
with a row whose file is gone."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import (
    TERMINAL_STATUSES,
    Artifact,
    Dataset,
    Erasure,
    Job,
    Model,
    utcnow,
)
from service.problems import ProblemError, not_found
from service.storage import ArtifactStore, ContentGone

logger = logging.getLogger(__name__)

ACTIVE_STATUSES = ("queued", "running")
BUILTIN_PREFIX = "builtin:"
INPUT_DELETED = "input_deleted"  # the failed job's error code


# ------------------------------------------------------------------ what a job uses


def job_inputs(request: Mapping[str, Any]) -> dict[str, str]:
    """Every stored object a job reads, ``{id: use}``: its model, train set, evaluation sets
    and holdout set (the stored request's ids; built-ins are not stored objects)."""
    uses: dict[str, str] = {}
    model_id = request.get("model_id")
    if isinstance(model_id, str):
        uses[model_id] = "model"
    train = request.get("train_dataset_id")
    if isinstance(train, str):
        uses.setdefault(train, "train dataset")
    evals = (request.get("eval") or {}).get("datasets") or {}
    if isinstance(evals, Mapping):
        for name, dataset_id in evals.items():
            if isinstance(dataset_id, str):
                uses.setdefault(dataset_id, f"evaluation set {name!r}")
    holdout = (request.get("step") or {}).get("holdout_dataset_id")
    if isinstance(holdout, str):
        uses.setdefault(holdout, "holdout set")
    return {k: v for k, v in uses.items() if not k.startswith(BUILTIN_PREFIX)}


# Only the request's id fields are read from the database (JSON paths): a request can hold a
# million edit indices, which a deletion has no reason to load.
INPUT_COLUMNS = (
    Job.model_id,
    Job.train_dataset_id,
    Job.request[("eval", "datasets")].label("eval_datasets"),
    Job.request[("step", "holdout_dataset_id")].label("holdout_dataset_id"),
)


def row_inputs(row: Any) -> dict[str, str]:
    """:func:`job_inputs` of a row selected with :data:`INPUT_COLUMNS`."""
    return job_inputs({"model_id": row.model_id, "train_dataset_id": row.train_dataset_id,
                       "eval": {"datasets": row.eval_datasets},
                       "step": {"holdout_dataset_id": row.holdout_dataset_id}})


def jobs_using(session: Session, owner_id: str, object_id: str,
               statuses: Iterable[str] = ACTIVE_STATUSES) -> list[tuple[str, str, str]]:
    """``(job_id, status, use)`` of the owner's jobs in ``statuses`` that read ``object_id``,
    oldest first. Matched in Python: evaluation sets live in the JSON request, and the active
    jobs of one owner are few (capped by the queue limit)."""
    rows = session.execute(
        sa.select(Job.id, Job.status, *INPUT_COLUMNS)
        .where(Job.owner_id == owner_id, Job.status.in_(tuple(statuses)))
        .order_by(Job.created_at, Job.id)
    ).all()
    found = []
    for row in rows:
        use = row_inputs(row).get(object_id)
        if use is not None:
            found.append((row.id, row.status, use))
    return found


def erased_input(session: Session, owner_id: str, request: Mapping[str, Any]) -> str | None:
    """The first input of a job (``request`` with its ids) that is erased, missing or not the
    owner's, or None. Reads each row ``FOR SHARE`` (PostgreSQL), so a deletion in flight is
    waited for; called by the claim inside its transaction (see the module docstring)."""
    for object_id in sorted(job_inputs(request)):
        entity = Model if object_id.startswith("mdl_") else Dataset
        row = session.execute(
            sa.select(entity.owner_id, entity.deleted_at)
            .where(entity.id == object_id)
            .with_for_update(read=True)
        ).one_or_none()
        if row is None or row.owner_id != owner_id or row.deleted_at is not None:
            return object_id
    return None


def input_deleted_error(object_id: str) -> dict[str, str]:
    """The ``error`` of a job whose input was erased before it could start."""
    return {"code": INPUT_DELETED,
            "message": f"{object_id} was deleted before the job started; nothing was run on it"}


# ------------------------------------------------------------------ reference counting


def lock_content(session: Session, sha256: str) -> None:
    """Serialise, until the transaction ends, everything that adds or removes a reference to
    the file ``sha256``: a transaction-scoped advisory lock on PostgreSQL; on SQLite the
    database's write lock (taken by a write that changes nothing)."""
    if session.get_bind().dialect.name == "postgresql":
        key = int(sha256[:15], 16)  # 60 bits: fits PostgreSQL's signed bigint
        session.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    else:
        session.execute(
            sa.update(Artifact).where(sa.false()).values(sha256=Artifact.sha256)
            .execution_options(synchronize_session=False)
        )


def live_references(session: Session, sha256: str) -> int:
    """How many live artifact rows hold the file ``sha256``."""
    return session.scalar(
        sa.select(sa.func.count()).select_from(Artifact)
        .where(Artifact.sha256 == sha256, Artifact.erased_at.is_(None))
    ) or 0


def release_content(factory: sessionmaker[Session], store: ArtifactStore, sha256: str) -> bool:
    """Remove the file ``sha256`` if no live row references it; True when removed."""
    with factory() as session:
        lock_content(session, sha256)
        removed = live_references(session, sha256) == 0 and store.delete(sha256)
        session.commit()
    if removed:
        logger.info("erasure: removed stored file %s", sha256)
    return removed


def check_published(session: Session, store: ArtifactStore, sha256: str) -> None:
    """Inside the transaction that indexes a new artifact row, under :func:`lock_content`:
    the file is still in the store (a deletion of the same bytes did not remove it after the
    upload wrote it). Raises :class:`ContentGone` otherwise; the caller retries."""
    lock_content(session, sha256)
    if not store.exists(sha256):
        raise ContentGone(f"stored file {sha256} was removed by a concurrent deletion")


def ensure_published(session: Session, store: ArtifactStore, sha256: str, source: Path) -> None:
    """Like :func:`check_published`, for a writer that still has the bytes (``source``, the
    worker's staging copy): puts the file back instead of failing."""
    lock_content(session, sha256)
    if not store.exists(sha256):
        store.put_file(source)


def sweep_unreferenced(factory: sessionmaker[Session], store: ArtifactStore,
                       older_than_s: float = 3600.0) -> list[str]:
    """Remove files no live row references (left when a process died between an erasure's
    commit and its file removal, or an upload's file write and its row). Only files older
    than ``older_than_s``: a younger one may be an upload about to be indexed."""
    removed = []
    for sha256 in store.stored_hashes(older_than_s):
        if release_content(factory, store, sha256):
            removed.append(sha256)
    return removed


# ------------------------------------------------------------------ erasing one object


def _mark_deleted(session: Session, entity: type, owner_id: str, object_id: str,
                  kind: str, now: datetime) -> None:
    """The conditional UPDATE that orders a deletion against a claim (module docstring)."""
    rows = session.execute(
        sa.update(entity)
        .where(entity.id == object_id, entity.owner_id == owner_id, entity.deleted_at.is_(None))
        .values(deleted_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if rows != 1:
        raise not_found(kind, object_id)


def _refuse_if_used(session: Session, owner_id: str, kind: str, object_id: str) -> None:
    users = jobs_using(session, owner_id, object_id)
    if users:
        job_id, status, use = users[0]
        more = f" (and {len(users) - 1} more job(s))" if len(users) > 1 else ""
        raise ProblemError(
            409,
            f"{kind} {object_id!r} is the {use} of {status} job {job_id!r}{more}; cancel it "
            "or wait until it ends, then delete again",
            slug=f"{kind}-in-use",
        )


def _last_job_using(session: Session, owner_id: str, object_id: str) -> str | None:
    used = jobs_using(session, owner_id, object_id, statuses=TERMINAL_STATUSES)
    return used[-1][0] if used else None


def _erase_file(session: Session, artifact_id: str | None, now: datetime) -> None:
    if artifact_id is not None:
        session.execute(
            sa.update(Artifact).where(Artifact.id == artifact_id, Artifact.erased_at.is_(None))
            .values(erased_at=now).execution_options(synchronize_session=False)
        )


def _erase_stored(session: Session, entity: type, kind: str, owner_id: str, object_id: str,
                  now: datetime) -> Erasure:
    """A model or dataset: deleted, its file's reference dropped, its record built."""
    _mark_deleted(session, entity, owner_id, object_id, kind, now)
    _refuse_if_used(session, owner_id, kind, object_id)
    row = session.get(entity, object_id)
    assert row is not None
    _erase_file(session, row.artifact_id, now)
    return Erasure(owner_id=owner_id, kind=kind, object_id=object_id, name=row.name,
                   sha256=row.sha256, size_bytes=row.size_bytes,
                   job_id=row.source_job_id or _last_job_using(session, owner_id, object_id))


def _erase_job(session: Session, owner_id: str, job_id: str, now: datetime) -> Erasure:
    """A terminal job: request, result, progress, events and metrics gone (409 while active)."""
    job = session.get(Job, job_id)
    if job is None or job.owner_id != owner_id or job.deleted_at is not None:
        raise not_found("job", job_id)
    from service.jobs.state import erase_job_row  # the job row's owner (imports this module)

    if not erase_job_row(session, job_id, now):
        raise ProblemError(
            409, f"job {job_id!r} is {job.status}: cancel it and wait until it ends, then "
            "delete it", slug="job-not-terminal")
    return Erasure(owner_id=owner_id, kind="job", object_id=job_id, name=None, sha256=None,
                   size_bytes=None, job_id=job_id)


_STORED = {"model": Model, "dataset": Dataset}


def erase_in_session(session: Session, kind: str, owner_id: str, object_id: str, *,
                     reason: str, api_key_id: str | None,
                     now: datetime | None = None) -> Erasure:
    """Erase one object in the caller's transaction (the caller commits, then calls
    :func:`release_content` with the record's sha256). Raises 404/409 problems."""
    now = now or utcnow()
    if kind == "job":
        record = _erase_job(session, owner_id, object_id, now)
    else:
        record = _erase_stored(session, _STORED[kind], kind, owner_id, object_id, now)
    record.reason = reason
    record.api_key_id = api_key_id
    record.created_at = now
    session.add(record)
    session.flush()
    return record


def erase(factory: sessionmaker[Session], store: ArtifactStore, kind: str, owner_id: str,
          object_id: str, *, reason: str = "request", api_key_id: str | None = None,
          now: datetime | None = None) -> Erasure:
    """Erase one object (one transaction: the object, its file reference, its record), then
    remove its file if that was the last reference. Returns the record."""
    with factory() as session:
        try:
            record = erase_in_session(session, kind, owner_id, object_id, reason=reason,
                                      api_key_id=api_key_id, now=now)
            session.commit()
        except BaseException:
            session.rollback()
            raise
    if record.sha256 is not None:
        release_content(factory, store, record.sha256)
    logger.info("erased %s %s (%s)", kind, object_id, reason)
    return record


def erased_inputs_of(session: Session, owner_id: str, request: Mapping[str, Any]
                     ) -> list[Erasure]:
    """The erasure records of a job's inputs (for its report), in the order they happened."""
    ids = list(job_inputs(request))
    if not ids:
        return []
    return list(session.scalars(
        sa.select(Erasure).where(Erasure.owner_id == owner_id, Erasure.object_id.in_(ids))
        .order_by(Erasure.created_at, Erasure.id)
    ))
