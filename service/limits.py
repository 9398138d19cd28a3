"""Per-owner limits (docs/api.md Limits): queued jobs, stored bytes, request rate. Past one, a 429
problem with ``Retry-After``. Every limit is an operator setting (``GIF_MAX_QUEUED_JOBS_PER_
OWNER``, ``GIF_MAX_STORED_BYTES_PER_OWNER``, ``GIF_RATE_LIMIT_PER_MINUTE``); None turns it off.

The queued-jobs and stored-bytes checks count rows at the moment of the request, without a
lock: concurrent requests of one owner can pass the limit by as many as are in flight (a
soft limit, as cheap as one indexed count)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import Dataset, Job, Model
from service.problems import ProblemError
from service.settings import Settings


def too_many(detail: str, retry_after_s: float, slug: str) -> ProblemError:
    """A 429 problem; ``Retry-After`` in whole seconds, at least 1."""
    seconds = max(1, math.ceil(retry_after_s))
    return ProblemError(429, detail, slug=slug, headers={"Retry-After": str(seconds)})


# The owner's queued jobs (``:owner_id``), counted up to ``:queued_cap`` (the limit: enough to
# decide, and bounded however long the queue): a scalar subquery a submission's read embeds;
# answered from the (owner_id, status) index.
QUEUED_JOBS = sa.select(sa.func.count()).select_from(
    sa.select(sa.literal_column("1"))
    .where(Job.owner_id == sa.bindparam("owner_id"), Job.status == "queued")
    .limit(sa.bindparam("queued_cap"))
    .subquery()
).scalar_subquery()


def queued_cap(settings: Settings) -> int:
    """``:queued_cap`` of :data:`QUEUED_JOBS` (0 without a limit: nothing to count)."""
    return settings.max_queued_jobs_per_owner or 0


def refuse_queued_jobs(queued: int, settings: Settings) -> None:
    """429 when ``queued`` (the owner's queued jobs, counted by :data:`QUEUED_JOBS`) is at the
    limit."""
    limit = settings.max_queued_jobs_per_owner
    if limit is None:
        return
    if queued >= limit:
        raise too_many(
            f"you have {queued} queued jobs, the most allowed (GIF_MAX_QUEUED_JOBS_PER_OWNER="
            f"{limit}); submit again once some have started", settings.limit_retry_after_s,
            "too-many-queued-jobs",
        )


def stored_bytes(session: Session, owner_id: str) -> int:
    """The bytes of the owner's models and datasets that are not deleted."""
    total = 0
    for entity in (Model, Dataset):
        total += session.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(entity.size_bytes), 0))
            .where(entity.owner_id == owner_id, entity.deleted_at.is_(None))
        ) or 0
    return int(total)


def check_storage(session: Session, owner_id: str, settings: Settings, incoming: int) -> None:
    """Refuse an upload of ``incoming`` bytes that would take the owner past the storage
    limit (``incoming=0``: refused when already at it)."""
    limit = settings.max_stored_bytes_per_owner
    if limit is None:
        return
    used = stored_bytes(session, owner_id)
    if used + incoming > limit or (incoming == 0 and used >= limit):
        raise too_many(
            f"storing {incoming} more bytes would take you past your {limit} bytes "
            f"(GIF_MAX_STORED_BYTES_PER_OWNER; {used} used): delete models or datasets first",
            settings.limit_retry_after_s, "storage-limit",
        )


@dataclass
class RateLimiter:
    """A token bucket per owner holding a minute's worth of requests, refilled continuously
    (``per_minute / 60`` a second): bursts up to a minute's allowance, then the steady rate.
    In memory, per API process."""

    per_minute: int
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _now(self) -> float:
        return time.monotonic()

    def take(self, owner_id: str) -> float:
        """Spend one token; returns 0, or the seconds until a token is available (refused)."""
        rate = self.per_minute / 60.0
        now = self._now()
        with self._lock:
            tokens, last = self._buckets.get(owner_id, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[owner_id] = (tokens - 1.0, now)
                return 0.0
            self._buckets[owner_id] = (tokens, now)
            return (1.0 - tokens) / rate

    def check(self, owner_id: str) -> None:
        wait = self.take(owner_id)
        if wait > 0:
            raise too_many(
                f"more than {self.per_minute} requests a minute (GIF_RATE_LIMIT_PER_MINUTE)",
                wait, "rate-limited",
            )


def rate_limiter(settings: Settings) -> RateLimiter | None:
    return RateLimiter(settings.rate_limit_per_minute) if settings.rate_limit_per_minute else None


def storage_admission(
    factory: sessionmaker[Session], owner_id: str, settings: Settings
) -> Callable[[int], None] | None:
    """The ``admit`` of an upload route (``service.api.uploads.create_from_upload``)."""
    if settings.max_stored_bytes_per_owner is None:
        return None

    def admit(incoming: int) -> None:
        with factory() as session:
            check_storage(session, owner_id, settings, incoming)

    return admit
