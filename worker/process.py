"""What a job process keeps between jobs, and its warm-up before the first one.

Both runners reuse one job process for many jobs (Celery's pool child, the local runner's
spawned child). Before, every job built a database engine (a new connection, on PostgreSQL a
TCP and auth round trip) and disposed of it, and the process's first job paid for its first
connection, the ORM's mapper configuration and statement compilation, the store's directories
and the engine's remaining lazy imports: the first job after a start cost about a second more
than the next ones, and the first cancelled message opened the first connection.

:func:`resources` holds, per process, one engine (its pool keeps the connection open between
jobs), session factory and artifact store for the settings; a process forked from one that
had them (never the case in the runners, but cheap to guard) builds its own instead of using
the parent's connections. :func:`warm_up` runs once per job process before its first message
(Celery's ``worker_process_init``, the local child's start): the engine's imports, a first
connection, the claim path's read compiled, the store's directories, a tiny CPU autograd pass,
then ``gc.freeze()`` so that the garbage collection after every job (``release_memory``) walks
only what jobs allocated, not the hundreds of thousands of objects torch and its imports left
(it took ~0.45 s per job before, run after the job's terminal write but ahead of the next job).

It never initialises CUDA: the Celery parent only imports (``preload_engine``), and the
warm-up in the child queries nothing on the device either, so no GPU memory is held by a job
process that no job has asked to use the GPU."""

from __future__ import annotations

import gc
import logging
import os
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session, configure_mappers, sessionmaker

from service.db.session import engine_from_settings, make_session_factory
from service.settings import Settings
from service.storage import ArtifactStore

logger = logging.getLogger(__name__)


@dataclass
class JobProcess:
    """The lasting state of one job process for one set of settings."""

    key: tuple
    pid: int
    engine: sa.Engine
    factory: sessionmaker[Session]
    store: ArtifactStore


_current: JobProcess | None = None
_warmed: dict[int, float] = {}  # pid → seconds its warm-up took (once per process)


def _key(settings: Settings) -> tuple:
    return (settings.database_url, str(settings.artifacts_dir), settings.min_free_bytes)


def resources(settings: Settings) -> JobProcess:
    """This process's engine, session factory and store for ``settings`` (built on first use,
    kept between jobs; rebuilt if the settings differ or after a fork)."""
    global _current
    current, key, pid = _current, _key(settings), os.getpid()
    if current is not None and current.pid == pid and current.key == key:
        return current
    if current is not None:
        # Another database (tests), or inherited across a fork: a child must never use, nor
        # close, its parent's connections.
        current.engine.dispose(close=current.pid == pid)
    engine = engine_from_settings(settings)
    _current = JobProcess(
        key=key,
        pid=pid,
        engine=engine,
        factory=make_session_factory(engine),
        store=ArtifactStore(settings.artifacts_dir, min_free_bytes=settings.min_free_bytes),
    )
    return _current


def close_resources() -> None:
    """Close this process's connections (a job process that is shutting down)."""
    global _current
    current, _current = _current, None
    if current is not None:
        current.engine.dispose(close=current.pid == os.getpid())


def warmed_up() -> bool:
    """Whether :func:`warm_up` ran in this process."""
    return os.getpid() in _warmed


def warm_up(settings: Settings) -> float:
    """Prepare this job process for its first message (see the module docstring); once per
    process, later calls return at once. Returns the seconds the warm-up took (0.0 when it had
    already run). A database that cannot be reached is logged, not raised: the first job then
    opens its connection itself (and takes the runners' retry paths)."""
    pid = os.getpid()
    if pid in _warmed:
        return 0.0
    started = time.perf_counter()
    from service.jobs.state import warm_up_reads
    from worker.jobs import preload_engine

    preload_engine()
    configure_mappers()
    process = resources(settings)
    try:
        warm_up_reads(process.factory)
    except sa.exc.SQLAlchemyError:
        logger.warning("job process warm-up: the database is not reachable yet", exc_info=True)
    _warm_torch()
    gc.collect()
    gc.freeze()  # what exists now lives as long as the process: later collections skip it
    seconds = time.perf_counter() - started
    _warmed[pid] = seconds
    logger.info("job process %s warmed up in %.2f s", pid, seconds)
    return seconds


def _warm_torch() -> None:
    """One tiny forward and backward pass on the CPU: torch's first autograd call sets up its
    engine and thread pool. No CUDA call (see the module docstring)."""
    import torch

    weight = torch.ones(4, 4, requires_grad=True)
    (torch.nn.functional.linear(torch.ones(2, 4), weight).relu().sum()).backward()
