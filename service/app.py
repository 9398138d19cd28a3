"""``create_app(settings) -> FastAPI``: the HTTP API of api.md.

The app holds (on ``app.state``) the settings, one engine (and ``read_engine``, the same pool in
autocommit mode, for single-statement reads; on SQLite also ``loop_reader``, a read-only
connection for the event loop's own one-statement reads) and session factory, the artifact
store, the built-in dataset catalogue and the dispatcher. The dispatcher is created at startup
(lifespan) — or at once for runner ``none`` or when one is passed in — and closed at shutdown.
The schema is not created here: run the migrations first (``gif-service migrate``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import sqlalchemy as sa
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import ROUTERS
from service.api.deps import AUTH_FAILURE_STATE_KEY, OWNER_STATE_KEY
from service.api.uploads import BODY_LIMIT_SCOPE_KEY, BodyLimit
from service.auth import Caller, lookup_authorization, touch_key
from service.catalog import BuiltinCatalog
from service.db.session import (
    LoopReader,
    autocommit_reads,
    engine_from_settings,
    loop_reader,
    make_session_factory,
    read_once,
)
from service.dispatch import Dispatcher, NoneDispatcher, make_dispatcher
from service.jobs.reaper import maybe_start_reaper
from service.limits import RateLimiter, SharedRateLimiter, rate_limiter
from service.observability import install_observability
from service.problems import BodyRefused, install_problem_handlers
from service.retention import maybe_start_retention
from service.settings import Settings
from service.storage import ArtifactStore
from service.webhooks.sender import WebhookSender

logger = logging.getLogger("service.app")

# Every request body is bounded before it is read: 16 MiB holds a million relabel indices.
# Only a route that streams its body to disk under its own cap (uploads) raises it, for itself.
MAX_JSON_BODY_BYTES = 16 * 1024 * 1024
# Served without a key (api.md): health, metrics and the API's own description.
PUBLIC_PATHS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
)


class AuthenticationMiddleware:
    """Authenticate every request but ``PUBLIC_PATHS`` before the app sees it, so that no
    byte of a body is read for a request without a valid key, whatever its route, size or
    Content-Type (FastAPI reads a route's body before it solves the route's dependencies).

    The owner goes into the request's state for ``service.api.deps.current_owner``. A missing,
    malformed, unknown or revoked key (or a lookup that failed: database down) goes there
    instead, and the app gets a ``receive`` that refuses to read the body: the route's
    ``current_owner`` raises the failure, or the body read does (:class:`BodyRefused`), and
    the app's problem handlers answer — 401 with the ``Bearer`` challenge, 503 — through the
    router, so the access log and the metrics count it by route."""

    def __init__(self, app: ASGIApp, engine: sa.Engine,
                 limiter: RateLimiter | SharedRateLimiter | None = None,
                 loop_reader: LoopReader | None = None):
        self.app = app
        self.engine = engine
        self.limiter = limiter
        self.loop_reader = loop_reader

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _path(scope) in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        raw = _header(scope, b"authorization")
        header = raw.decode("latin-1") if raw is not None else None
        state = scope.setdefault("state", {})
        state.pop(OWNER_STATE_KEY, None)
        state.pop(AUTH_FAILURE_STATE_KEY, None)
        try:
            owner = await self._authenticate(header)
            if self.limiter is not None:  # past the rate: refused like a bad key, body unread
                await self.limiter.check(owner.id)
            state[OWNER_STATE_KEY] = owner
        except Exception as err:  # noqa: BLE001 - answered by the app's problem handlers
            state[AUTH_FAILURE_STATE_KEY] = err
        failure = state.get(AUTH_FAILURE_STATE_KEY)
        if failure is None:
            await self.app(scope, receive, send)
            return

        async def refuse_body() -> Message:
            raise BodyRefused(failure)

        await self.app(scope, refuse_body, send)

    async def _authenticate(self, header: str | None) -> Caller:
        """The key's lookup on the loop's own SQLite connection when it can answer (else in
        the thread pool: ``read_once``), its rare write (``last_used_at``, once a minute)
        in the thread pool."""
        caller, stale = await read_once(self.loop_reader, self.engine, lookup_authorization,
                                        header)
        if stale:
            await run_in_threadpool(self._touch, caller.key_id)
        return caller

    def _touch(self, key_id: str) -> None:
        with self.engine.connect() as connection:
            touch_key(connection, key_id)


class BodySizeLimitMiddleware:
    """Refuse request bodies larger than the request's :class:`BodyLimit` with 413 — every
    body, whatever its Content-Type (a JSON route given a multipart Content-Type is read into
    memory by the framework too). The limit starts at ``max_bytes``; an upload route raises it
    for its own request before streaming (``service.api.uploads``), so the check is made on
    every ``receive``, against the limit of that moment.

    The error is raised from ``receive`` as an ``HTTPException`` so it reaches the problem
    handlers (FastAPI re-raises HTTP exceptions met while reading a body); a declared
    ``Content-Length`` over the limit is refused before any byte is read."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_JSON_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = BodyLimit(self.max_bytes)
        scope[BODY_LIMIT_SCOPE_KEY] = limit
        received = 0
        declared = _declared_length(scope)

        async def limited_receive() -> Message:
            nonlocal received
            if declared is not None and declared > limit.max_bytes:
                raise _too_large(limit.max_bytes)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.max_bytes:
                    raise _too_large(limit.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


def _too_large(max_bytes: int) -> StarletteHTTPException:
    return StarletteHTTPException(
        413, f"the request body exceeds {max_bytes} bytes (uploads: POST /v1/models or "
        f"/v1/datasets, multipart)"
    )


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


def _path(scope: Scope) -> str:
    path = scope.get("path", "")
    root = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def _declared_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


DESCRIPTION = """Edit trained PyTorch classifiers without retraining, with generalized
influence functions (GIF): upload a model and its training data, submit an edit job
(remove a class, remove samples, fix labels), download the edited model.

Authenticate with `Authorization: Bearer <api key>`. Errors are RFC 9457
`application/problem+json`."""


def create_app(settings: Settings, dispatcher: Dispatcher | None = None) -> FastAPI:
    """The FastAPI application for ``settings`` (``dispatcher``: override the runner)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if app.state.dispatcher is None:
            app.state.dispatcher = make_dispatcher(settings)
        removed = app.state.store.clean_tmp()
        if removed:
            logger.info("removed %d staging files of dead uploads", removed)
        # Celery mode: requeue or fail jobs whose worker died (service/jobs/reaper.py).
        reaper = maybe_start_reaper(settings, app.state.session_factory, app.state.dispatcher)
        # Unreferenced files of a crash; GIF_RETENTION_*: old jobs, unused uploads.
        retention = maybe_start_retention(settings, app.state.session_factory, app.state.store)
        webhooks = WebhookSender(app.state.session_factory, settings).start()
        try:
            yield
        finally:
            webhooks.close()
            retention.close()
            if reaper is not None:
                reaper.close()
            app.state.dispatcher.close()
            if app.state.limiter is not None:
                await app.state.limiter.aclose()
            if app.state.loop_reader is not None:
                app.state.loop_reader.dispose()
            app.state.engine.dispose()

    app = FastAPI(
        title="gif-service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    engine = engine_from_settings(settings)
    assert settings.artifacts_dir is not None
    app.state.settings = settings
    app.state.engine = engine
    app.state.read_engine = autocommit_reads(engine)
    app.state.loop_reader = loop_reader(engine)  # SQLite: one-statement reads on the loop
    app.state.session_factory = make_session_factory(engine)
    app.state.store = ArtifactStore(settings.artifacts_dir, min_free_bytes=settings.min_free_bytes)
    app.state.catalog = BuiltinCatalog()
    app.state.limiter = rate_limiter(settings)
    if dispatcher is None and settings.effective_runner == "none":
        dispatcher = NoneDispatcher()
    app.state.dispatcher = dispatcher
    install_problem_handlers(app)
    # Added last runs first: the body bound, then authentication, then the routes. The app
    # reads through authentication's receive, so a request without a key is refused (401)
    # before the bound is even consulted.
    app.add_middleware(
        AuthenticationMiddleware,
        engine=app.state.read_engine,
        limiter=app.state.limiter,
        loop_reader=app.state.loop_reader,
    )
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=MAX_JSON_BODY_BYTES)
    for router in ROUTERS:
        app.include_router(router)
    install_observability(app, app.state.session_factory)  # request ids, access log, /metrics
    return app
