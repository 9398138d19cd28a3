"""THE job body: :func:`execute_job` runs one edit job from its database row to a terminal state.

Celery's ``gif.run_job`` task and the embedded :class:`service.runners.local.LocalRunner` both
call it. The job row is the source of truth and the function is idempotent (see
:mod:`service.jobs.state` for the claim and fencing rules): a terminal job is left alone, a
redelivered message for a job that runs elsewhere does nothing, and a job never succeeds twice.

One run: claim → load the model and datasets from the artifact store (hashes verified) → call
:func:`gif.edit.run_edit` with hooks that write throttled progress, events and heartbeats to the
row and poll ``cancel_requested`` → store the edited state dict as a safetensors artifact →
in ONE transaction: artifact row, edited model row (``source_job_id`` = the job), metrics rows,
job ``result``, ``status=succeeded`` and the ``succeeded`` event. The database engine and the
store are the job process's own, kept between jobs (:mod:`worker.process`). Failures map to
``error = {code, message}``: ``GifError`` → its ``code``; ``Cancelled`` → ``cancelled``; CUDA
or host OOM → ``out_of_memory``; a time limit → ``timeout``; anything else →
``internal_error`` with a short message (the traceback goes to the log only). The source
model is never written."""

from __future__ import annotations

import gc
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from gif.builtins import is_builtin
from gif.checkpoint import read_state_dict, write_safetensors
from gif.data import ArrayDataset, load_builtin, read_dataset
from gif.edit import EditHooks, EditOutcome, LoadedModel, Progress, run_edit
from gif.errors import (
    Cancelled,
    GifError,
    InvalidCheckpoint,
    InvalidDataset,
    InvalidRequest,
    NonFinite,
)
from gif.request import EditRequest, RemoveClass, RemoveSamples
from gif.spec import ModelSpec
from service.db.models import (
    CHECKPOINT_MEDIA_TYPE,
    DATASET_MEDIA_TYPE,
    SUMMARY_SET,
    Artifact,
    Dataset,
    Job,
    Metric,
    Model,
    new_id,
)
from service.erasure import ensure_published, release_content
from service.jobs import state
from service.jobs.events import append_event
from service.jobs.state import Claim
from service.observability import job_context
from service.settings import Settings
from service.storage import ArtifactStore, StorageError, is_disk_full
from worker.process import JobProcess, resources

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.5  # progress writes are throttled to ~2/s; a phase change always writes
CANCEL_POLL_INTERVAL_S = 0.5  # a cancel is noticed within this (plus one solver iteration)
JOB_ID_FIELDS = ("model_id", "train_dataset_id")  # in the stored request, not in EditRequest
DB_RETRIES = 6
T = TypeVar("T")


def preload_engine() -> None:
    """Import, once, what the engine imports lazily on its first job, so that processes forked
    from the caller (Celery's pool children) start jobs at once (the job process's
    :func:`worker.process.warm_up` calls it too). Touches no CUDA state.

    ``torch._dynamo`` is loaded by the meta-device shape check of ``gif.data`` on first use
    and alone takes seconds to import; scikit-learn serves the digits built-in and the MIA."""
    import sklearn.datasets  # noqa: F401
    import sklearn.svm  # noqa: F401
    import torch._dynamo  # noqa: F401

    import gif.hvp  # noqa: F401
    import gif.methods  # noqa: F401
    import gif.params  # noqa: F401
    import gif.registry  # noqa: F401
    import gif.selection  # noqa: F401
    import gif.solvers  # noqa: F401


def default_worker_id() -> str:
    """``<host>:<pid>``: who holds a running job (shown in logs, used by the runners)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def execute_job(
    job_id: str,
    settings: Settings,
    *,
    worker_id: str | None = None,
    orphaned: bool = False,
    timeout_errors: tuple[type[BaseException], ...] = (),
) -> str | None:
    """Run job ``job_id`` to a terminal state, if it needs a run; returns the job's status
    afterwards (None if it does not exist).

    ``orphaned``: the caller knows a ``running`` job's previous worker is gone (the local runner
    at start-up); otherwise a ``running`` job is only taken over once its heartbeat is stale.
    ``timeout_errors``: exceptions that mean "time limit reached" (Celery's soft time limit)."""
    process = resources(settings)  # kept between jobs: its connection is already open
    factory = process.factory
    with job_context(job_id):
        claim = state.claim_job(
            factory,
            job_id,
            worker_id or default_worker_id(),
            orphaned=orphaned,
            stale_after_s=state.STALE_HEARTBEATS * settings.heartbeat_interval_s,
            time_limit_s=settings.job_time_limit_s,
        )
        if claim is not None:
            try:
                _run_claimed(process, settings, claim, timeout_errors)
            finally:
                release_memory()
        with factory() as session:
            job = session.get(Job, job_id)
            return job.status if job is not None else None


def _run_claimed(
    process: JobProcess,
    settings: Settings,
    claim: Claim,
    timeout_errors: tuple[type[BaseException], ...],
) -> None:
    """Run a claimed job and write exactly one terminal state (if the job is still ours)."""
    factory, store = process.factory, process.store
    reporter = JobReporter(factory, claim, settings.heartbeat_interval_s)
    reporter.event("info", "load", f"started on {claim.worker_id} (attempt {claim.attempt})")
    try:
        with reporter.heartbeat():
            request = parse_request(claim.request)
            reporter.progress(Progress(phase="load", iteration=0, max_iter=0, residual=None))
            source, model = load_model(factory, store, claim)
            train = load_dataset(factory, store, claim.owner_id, claim.train_dataset_id)
            eval_sets = {
                name: load_dataset(factory, store, claim.owner_id, dataset_id)
                for name, dataset_id in request.eval.datasets.items()
            }
            holdout_id = request.step.holdout_dataset_id  # E9: tunes a sample removal only
            holdout = (None if holdout_id is None or request.trains else
                       load_dataset(factory, store, claim.owner_id, holdout_id))
            edit_started = time.monotonic()
            outcome = run_edit(request, model, train, eval_sets, reporter.hooks(), holdout)
            edit_seconds = time.monotonic() - edit_started
            reporter.progress(Progress(phase="save", iteration=0, max_iter=0, residual=None))
            edited_model_id = store_outcome(factory, store, claim, source, outcome,
                                            retained=retained_dataset(request, train),
                                            edit_seconds=edit_seconds)
    except Exception as exc:  # every failure ends the job; none may leave it `running`
        status, error = job_outcome(
            exc, time_limit_s=settings.job_time_limit_s, timeout_errors=timeout_errors
        )
        if error is not None and error["code"] == "internal_error":
            logger.exception("job %s: internal error", claim.job_id)
        if error is not None and error["code"] == "out_of_memory":
            _release_accelerator_memory()
        _finish(factory, reporter, claim, status, error, None if error else str(exc))
        return
    if edited_model_id is None:
        logger.warning("job %s: result not stored (the job is no longer ours)", claim.job_id)
        return
    logger.info("job %s succeeded: edited model %s", claim.job_id, edited_model_id)


def with_db_retry(write: Callable[..., T], *args: Any, attempts: int = DB_RETRIES) -> T:
    """Run a terminal write, retrying on a lost or busy database (``OperationalError``) with
    growing pauses (~1+2+4+8+15 s): an outcome computed over minutes must survive a database
    restart. The writes are fenced conditional UPDATEs, so a retry cannot apply twice."""
    for attempt in range(attempts):
        try:
            return write(*args)
        except OperationalError:
            if attempt == attempts - 1:
                raise
            pause = min(2.0**attempt, 15.0)
            logger.warning("database unavailable; retrying the job's outcome in %.0f s", pause)
            time.sleep(pause)
    raise AssertionError("unreachable")


def job_outcome(
    exc: BaseException,
    *,
    time_limit_s: float,
    timeout_errors: tuple[type[BaseException], ...] = (),
) -> tuple[str, dict | None]:
    """The terminal ``(status, error)`` of a run that raised ``exc``: ``Cancelled`` →
    ``cancelled``; a time-limit exception → ``timeout``; another ``GifError`` → its ``code``;
    CUDA/host OOM → ``out_of_memory``; anything else → ``internal_error`` with a one-line
    message (the traceback is logged, never stored)."""
    if isinstance(exc, Cancelled):
        return "cancelled", None
    if timeout_errors and isinstance(exc, timeout_errors):
        message = f"the job ran past its time limit ({time_limit_s:g} s)"
        return "failed", {"code": "timeout", "message": message}
    if isinstance(exc, GifError):
        return "failed", {"code": exc.code, "message": exc.message}
    if is_disk_full(exc):
        message = ("the server's storage is full: the edited model could not be stored "
                   "(delete what you no longer need and submit the job again)")
        return "failed", {"code": "insufficient_storage", "message": message}
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        message = (
            f"out of memory ({type(exc).__name__}): lower solver.batch_size, "
            "solver.hessian_samples or eval.retain_samples, or use a larger device"
        )
        return "failed", {"code": "out_of_memory", "message": message}
    detail = _first_line(str(exc))
    message = f"internal error ({type(exc).__name__}{': ' + detail if detail else ''})"
    return "failed", {"code": "internal_error", "message": message}


def _finish(
    factory: sessionmaker[Session],
    reporter: JobReporter,
    claim: Claim,
    status: str,
    error: dict | None,
    message: str | None = None,
) -> None:
    """The run's own terminal write (fenced by its claim; the event is written with it)."""
    text = message or (error or {}).get("message", status)

    def write() -> bool:
        return state.finish_job(
            factory, claim, status, error, message=text, phase=reporter.phase
        )

    if with_db_retry(write):
        logger.info("job %s %s: %s", claim.job_id, status, text)


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:limit]


def _release_accelerator_memory() -> None:
    if torch.cuda.is_initialized():  # never the first CUDA call of a process
        torch.cuda.empty_cache()


def release_memory() -> None:
    """Free what a finished job left, so the next job in this (reused) process starts with
    the device's memory free: unreachable tensors (cycles hold some), then the CUDA caching
    allocator's blocks and IPC handles. Touches CUDA only if this process already uses it."""
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()
        torch.cuda.reset_peak_memory_stats()


# --- inputs ------------------------------------------------------------------------------


def parse_request(stored: Mapping[str, Any]) -> EditRequest:
    """The stored (normalised) request as an :class:`EditRequest` (the two ids dropped)."""
    body = {k: v for k, v in stored.items() if k not in JOB_ID_FIELDS}
    try:
        return EditRequest.model_validate(body)
    except ValidationError as exc:
        raise InvalidRequest(f"the stored job request is invalid: {exc}") from exc


def _verified_path(store: ArtifactStore, sha256: str, error: type[GifError], what: str) -> Path:
    """The artifact's path after re-hashing it: a corrupt or missing file is ``error``."""
    try:
        store.verify(sha256)
    except (StorageError, ValueError, OSError) as exc:
        raise error(f"{what}: the stored file is unusable ({exc})") from exc
    return store.path(sha256)


def load_model(
    factory: sessionmaker[Session], store: ArtifactStore, claim: Claim
) -> tuple[Model, LoadedModel]:
    """The job's source model row and its weights (hash verified, read without unpickling)."""
    with factory() as session:
        source = session.get(Model, claim.model_id)
        artifact = session.get(Artifact, source.artifact_id) if source is not None else None
    if source is None or artifact is None:
        raise InvalidCheckpoint(f"model {claim.model_id} no longer exists")
    if artifact.sha256 != source.sha256:
        raise InvalidCheckpoint(f"model {source.id}: its artifact does not match its sha256")
    path = _verified_path(store, source.sha256, InvalidCheckpoint, f"model {source.id}")
    spec = ModelSpec(
        arch=source.arch,
        arch_kwargs=dict(source.arch_kwargs or {}),
        input=dict(source.input or {}),
        task=source.task,
        name=source.name,
    )
    return source, LoadedModel(spec=spec, state_dict=read_state_dict(path))


def load_dataset(
    factory: sessionmaker[Session], store: ArtifactStore, owner_id: str, dataset_id: str
) -> ArrayDataset:
    """A built-in (``builtin:…``) or the owner's uploaded dataset (hash verified)."""
    if is_builtin(dataset_id):
        return load_builtin(dataset_id)
    with factory() as session:
        row = session.get(Dataset, dataset_id)
        artifact = session.get(Artifact, row.artifact_id) if row is not None else None
    if row is None or artifact is None or row.owner_id != owner_id:
        raise InvalidDataset(f"dataset {dataset_id} no longer exists")
    path = _verified_path(store, row.sha256, InvalidDataset, f"dataset {dataset_id}")
    return read_dataset(path, name=row.name)


# --- outputs -----------------------------------------------------------------------------


def json_safe(value: Any) -> Any:
    """``value`` as strict JSON (PostgreSQL rejects NaN): non-finite floats → None, tensors and
    numpy scalars → Python numbers, tuples → lists."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return json_safe(value.tolist())
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def _check_finite(state_dict: Mapping[str, torch.Tensor]) -> None:
    """Last guard before anything is stored: an edited weight that is NaN/Inf fails the job."""
    bad = [
        name
        for name, tensor in state_dict.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise NonFinite(f"the edited weights contain NaN or Inf in: {', '.join(bad[:10])}")


def edited_model_name(source: Model, request: Mapping[str, Any]) -> str:
    """A readable name for the edited model: the source's name plus the edit."""
    edit = request.get("edit", {})
    kind = edit.get("kind", "edit")
    detail = {
        "remove_class": lambda: f" class {edit.get('class')}",
        "remove_samples": lambda: f" {len(edit.get('indices', []))} samples",
        "relabel": lambda: f" {len(edit.get('indices', []))} samples",
    }.get(kind, lambda: "")()
    suffix = f" [{request.get('method', 'gif')} {kind}{detail}]"
    base = source.name or source.id
    return base[: 200 - len(suffix)] + suffix


def metric_rows(
    job_id: str, metrics: Mapping[str, Any], model_ids: Mapping[str, str | None]
) -> list[Metric]:
    """``metrics`` rows from ``result.metrics`` ({before|after: {set: {...}, scalar: x}}): one
    per stage and named set, plus a ``_summary`` row with the stage's scalars (score, ...).
    ``model_ids`` maps the stage to the model evaluated (source before, edited after)."""
    rows: list[Metric] = []
    for stage in ("before", "after"):
        by_set = metrics.get(stage) or {}
        summary = {}
        for name, values in by_set.items():
            if isinstance(values, Mapping):
                rows.append(
                    Metric(
                        job_id=job_id,
                        model_id=model_ids.get(stage),
                        stage=stage,
                        dataset=str(name),
                        values=json_safe(values),
                    )
                )
            else:
                summary[str(name)] = json_safe(values)
        if summary:
            rows.append(
                Metric(
                    job_id=job_id,
                    model_id=model_ids.get(stage),
                    stage=stage,
                    dataset=SUMMARY_SET,
                    values=summary,
                )
            )
    return rows


def retained_dataset(request: EditRequest, train: ArrayDataset) -> ArrayDataset | None:
    """The train set without the forgotten points, when the request asks for it
    (``outputs.retained_dataset``, removal edits only: the request refuses it otherwise)."""
    if not request.outputs.retained_dataset:
        return None
    keep = torch.ones(train.num_samples, dtype=torch.bool)
    edit = request.edit
    if isinstance(edit, RemoveClass):
        keep &= train.y != edit.class_
    elif isinstance(edit, RemoveSamples):
        keep[torch.as_tensor(list(edit.indices), dtype=torch.long)] = False
    else:  # pragma: no cover - refused by the request
        return None
    name = f"{train.name} without {int((~keep).sum())} forgotten points"[:200]
    return ArrayDataset(x=train.x[keep].contiguous(), y=train.y[keep].contiguous(), name=name)


@dataclass
class _Staged:
    """A file written into the store before the job's commit, kept until after it so the
    commit can put it back if a concurrent erasure of identical bytes removed it."""

    path: Path
    sha256: str
    size_bytes: int


def _stage_into_store(store: ArtifactStore, write: Callable[[Path], None]) -> tuple[Any, _Staged]:
    staging = store.stage()
    staging.close()
    write(staging.path)
    sha256, size_bytes = store.put_file(staging.path)
    return staging, _Staged(staging.path, sha256, size_bytes)


def _write_dataset(dataset: ArrayDataset, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"x": dataset.x, "y": dataset.y}, str(path))


def _dataset_row(claim: Claim, dataset: ArrayDataset, staged: _Staged, artifact_id: str,
                 dataset_id: str) -> Dataset:
    return Dataset(
        id=dataset_id,
        owner_id=claim.owner_id,
        name=dataset.name,
        num_samples=dataset.num_samples,
        sample_shape=list(dataset.sample_shape),
        dtype=dataset.dtype,
        num_classes=dataset.num_classes,
        class_counts=dataset.class_counts,
        sha256=staged.sha256,
        size_bytes=staged.size_bytes,
        artifact_id=artifact_id,
        source_job_id=claim.job_id,
    )


def store_outcome(
    factory: sessionmaker[Session],
    store: ArtifactStore,
    claim: Claim,
    source: Model,
    outcome: EditOutcome,
    retained: ArrayDataset | None = None,
    edit_seconds: float | None = None,
) -> str | None:
    """Write the edited checkpoint (and the ``retained`` dataset, if any) into the store
    (atomic), then in one transaction the artifact, edited model, dataset and metrics rows,
    the job's ``succeeded`` state and its ``succeeded`` event (with ``edit_seconds``, the
    edit's own time, so a job's overhead — submission to terminal minus this — is known).
    Returns the edited model's id, or None when the job was no longer ours (nothing
    recorded)."""
    _check_finite(outcome.state_dict)
    stagings: list[Any] = []
    placed: list[_Staged] = []
    committed = False
    try:
        staging, checkpoint = _stage_into_store(
            store, lambda path: write_safetensors(outcome.state_dict, path))
        stagings.append(staging)
        placed.append(checkpoint)
        kept = None
        if retained is not None:
            staging, kept = _stage_into_store(store, lambda path: _write_dataset(retained, path))
            stagings.append(staging)
            placed.append(kept)
        model_id = new_id("mdl")
        extra = {"retained_dataset_id": new_id("ds")} if kept is not None else {}
        result = json_safe({**outcome.result, "edited_model_id": model_id, **extra})

        def add_rows(session: Session) -> None:
            ensure_published(session, store, checkpoint.sha256, checkpoint.path)
            artifact = Artifact.record(
                session,
                owner_id=claim.owner_id,
                sha256=checkpoint.sha256,
                size_bytes=checkpoint.size_bytes,
                kind="checkpoint",
                media_type=CHECKPOINT_MEDIA_TYPE,
            )
            session.add(
                Model(
                    id=model_id,
                    owner_id=claim.owner_id,
                    name=edited_model_name(source, claim.request),
                    arch=source.arch,
                    arch_kwargs=source.arch_kwargs,
                    input=source.input,
                    task=source.task,
                    num_parameters=source.num_parameters,
                    input_shape=source.input_shape,
                    flat_input=source.flat_input,
                    num_outputs=source.num_outputs,
                    size_bytes=checkpoint.size_bytes,
                    sha256=checkpoint.sha256,
                    artifact_id=artifact.id,
                    source_job_id=claim.job_id,
                )
            )
            if kept is not None and retained is not None:
                ensure_published(session, store, kept.sha256, kept.path)
                dataset_artifact = Artifact.record(
                    session, owner_id=claim.owner_id, sha256=kept.sha256,
                    size_bytes=kept.size_bytes, kind="dataset", media_type=DATASET_MEDIA_TYPE)
                session.add(_dataset_row(claim, retained, kept, dataset_artifact.id,
                                         result["retained_dataset_id"]))
            session.flush()  # the model must exist before metrics rows point at it
            session.add_all(
                metric_rows(
                    claim.job_id,
                    result.get("metrics") or {},
                    {"before": source.id, "after": model_id},
                )
            )

        data = {"edited_model_id": model_id}
        if edit_seconds is not None:
            data["edit_seconds"] = round(edit_seconds, 4)
        event = ("info", "save", "succeeded", data)
        committed = with_db_retry(state.commit_success, factory, claim, result, add_rows, event)
    finally:
        for staging in stagings:
            staging.discard()
        if not committed:  # nothing indexed them: the files must not stay unreferenced
            for staged in placed:
                try:
                    release_content(factory, store, staged.sha256)
                except SQLAlchemyError:  # the start-up sweep of unreferenced files gets it
                    logger.warning("job %s: unindexed file %s left", claim.job_id, staged.sha256)
    return model_id if committed else None


# --- hooks -------------------------------------------------------------------------------


@dataclass
class JobReporter:
    """The engine's hooks bound to one claimed job: throttled progress, events, a heartbeat
    thread and a throttled cancel poll. Every write is fenced by the claim."""

    factory: sessionmaker[Session]
    claim: Claim
    heartbeat_interval_s: float
    phase: str = "load"
    _last_progress_at: float = 0.0
    _last_poll_at: float = 0.0
    _stop_requested: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def hooks(self) -> EditHooks:
        return EditHooks(progress=self.progress, event=self.event, should_cancel=self.should_cancel)

    def progress(self, progress: Progress) -> None:
        """Write ``progress`` when the phase changes or ``PROGRESS_INTERVAL_S`` passed."""
        now = time.monotonic()
        phase_changed = progress.phase != self.phase
        finished_phase = bool(
            progress.max_iter
            and progress.iteration is not None
            and progress.iteration >= progress.max_iter
        )
        if not (phase_changed or finished_phase) and now - self._last_progress_at < (
            PROGRESS_INTERVAL_S
        ):
            return
        self.phase = progress.phase
        self._last_progress_at = now
        payload = json_safe(
            {
                "phase": progress.phase,
                "iteration": progress.iteration,
                "max_iter": progress.max_iter,
                "residual": progress.residual,
            }
        )
        try:
            if not state.write_progress(self.factory, self.claim, payload):
                self._stop_requested = True  # the job is no longer ours: stop at the next check
        except SQLAlchemyError:  # progress is best effort: a database hiccup must not fail it
            logger.warning("job %s: progress not written", self.claim.job_id, exc_info=True)

    def event(self, level: str, phase: str | None, message: str, data: dict | None = None) -> None:
        try:
            append_event(
                self.factory, self.claim.job_id, level, phase, message, json_safe(data)
            )
        except SQLAlchemyError:  # the event log is best effort too
            logger.warning("job %s: event not written: %s", self.claim.job_id, message)

    def should_cancel(self) -> bool:
        """True once the user asked to cancel or the job is no longer ours (polled ≤ 2/s)."""
        now = time.monotonic()
        if not self._stop_requested and now - self._last_poll_at >= CANCEL_POLL_INTERVAL_S:
            self._last_poll_at = now
            try:
                signal = state.poll_signal(self.factory, self.claim, heartbeat=False)
                self._stop_requested = signal.should_stop
            except SQLAlchemyError:  # unknown for now: keep going, ask again next time
                logger.warning("job %s: cancel flag not readable", self.claim.job_id)
        return self._stop_requested

    @contextmanager
    def heartbeat(self) -> Iterator[None]:
        """Refresh ``heartbeat_at`` every ``heartbeat_interval_s`` from a thread, whatever the
        engine is doing, so a long phase without progress never looks like a dead worker."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat_interval_s):
                try:
                    signal = state.poll_signal(self.factory, self.claim, heartbeat=True)
                    if signal.should_stop:
                        self._stop_requested = True
                except Exception:  # a missed beat is harmless; the next one retries
                    logger.warning("job %s: heartbeat failed", self.claim.job_id, exc_info=True)

        thread = threading.Thread(target=beat, name=f"heartbeat-{self.claim.job_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5.0)
