"""Per-owner limits (docs/api.md Limits): queued jobs, stored bytes, request rate. Past one, a 429
problem with ``Retry-After``. Every limit is an operator setting (``GIF_MAX_QUEUED_JOBS_PER_
OWNER``, ``GIF_MAX_STORED_BYTES_PER_OWNER``, ``GIF_RATE_LIMIT_PER_MINUTE``); None turns it off.

The queued-jobs and stored-bytes checks count rows at the moment of the request, without a
lock: concurrent requests of one owner can pass the limit by as many as are in flight (a
soft limit, as cheap as one indexed count)."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import Dataset, Job, Model
from service.problems import ProblemError
from service.settings import Settings

logger = logging.getLogger("service.limits")


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
    In memory, per API process: the embedded default's (one process)."""

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

    async def check(self, owner_id: str) -> None:
        refuse_past_rate(self.per_minute, self.take(owner_id))

    async def aclose(self) -> None:
        return None


# The same bucket as RateLimiter's, in one Redis hash per owner, updated atomically by one
# script on the Redis server's clock (API processes' clocks need not agree). Redis replicates
# a script's effects, so reading TIME before writing is allowed (Redis >= 5). The wait comes
# back as a string: Redis turns a Lua number into an integer.
_TOKEN_BUCKET = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 1)
return tostring(wait)
"""
REDIS_TIMEOUT_S = 0.5
UNAVAILABLE_LOG_INTERVAL_S = 60.0


class SharedRateLimiter:
    """:class:`RateLimiter`'s bucket kept in Redis, so every API process of a deployment
    spends one owner's allowance (``GIF_BROKER_URL``'s Redis; docs/design.md, module map).

    A request pays one Redis round trip, on the event loop (``redis.asyncio``). While Redis
    cannot answer within :data:`REDIS_TIMEOUT_S` the limit is not applied (fail open, logged
    once a minute): a rate limit protects the service, and refusing every request because its
    counter is unreachable would be the outage it exists to prevent."""

    def __init__(self, per_minute: int, redis_url: str, prefix: str = "gif:rate:"):
        self.per_minute = per_minute
        self.redis_url = redis_url
        self.prefix = prefix
        # per event loop (a client's connections belong to the loop that opened them)
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary())
        self._last_logged = -math.inf

    def _client(self):
        import redis.asyncio

        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = redis.asyncio.Redis.from_url(
                self.redis_url, socket_timeout=REDIS_TIMEOUT_S,
                socket_connect_timeout=REDIS_TIMEOUT_S)
            client.token_bucket = client.register_script(_TOKEN_BUCKET)
            self._clients[loop] = client
        return client

    async def take(self, owner_id: str) -> float:
        """As :meth:`RateLimiter.take`; 0 while Redis is unavailable (fail open)."""
        import redis.exceptions

        try:
            wait = await self._client().token_bucket(
                keys=[self.prefix + owner_id], args=[self.per_minute, self.per_minute / 60.0])
        except (TimeoutError, redis.exceptions.RedisError, OSError) as err:
            now = time.monotonic()
            if now - self._last_logged >= UNAVAILABLE_LOG_INTERVAL_S:
                self._last_logged = now
                logger.warning("rate limit not applied: Redis unavailable (%s)", err)
            return 0.0
        return float(wait)

    async def check(self, owner_id: str) -> None:
        refuse_past_rate(self.per_minute, await self.take(owner_id))

    async def aclose(self) -> None:
        """Close this loop's client (the app's shutdown runs on the loop that served it)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()


def refuse_past_rate(per_minute: int, wait: float) -> None:
    """429 with ``Retry-After`` when a bucket refused a request (``wait`` > 0)."""
    if wait > 0:
        raise too_many(
            f"more than {per_minute} requests a minute (GIF_RATE_LIMIT_PER_MINUTE)",
            wait, "rate-limited",
        )


def rate_limiter(settings: Settings) -> RateLimiter | SharedRateLimiter | None:
    """None without a rate limit; shared through Redis when the deployment's broker is a
    Redis (every API process counts the same requests); else in this process's memory."""
    if not settings.rate_limit_per_minute:
        return None
    broker = settings.broker_url or ""
    if broker.startswith(("redis://", "rediss://", "unix://")):
        return SharedRateLimiter(settings.rate_limit_per_minute, broker)
    return RateLimiter(settings.rate_limit_per_minute)


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
