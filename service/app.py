"""``create_app(settings) -> FastAPI``: the HTTP API of API.md.

The app holds (on ``app.state``) the settings, one engine and session factory, the artifact
store, the built-in dataset catalogue and the dispatcher. The dispatcher is created at startup
(lifespan) — or at once for runner ``none`` or when one is passed in — and closed at shutdown.
The schema is not created here: run the migrations first (``gif-service migrate``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import ROUTERS
from service.catalog import BuiltinCatalog
from service.db.session import engine_from_settings, make_session_factory
from service.dispatch import Dispatcher, NoneDispatcher, make_dispatcher
from service.observability import install_observability
from service.problems import install_problem_handlers
from service.settings import Settings
from service.storage import ArtifactStore
from worker.reaper import maybe_start_reaper

logger = logging.getLogger("service.app")

# Bodies other than multipart uploads (which stream to disk under their own cap) are read
# into memory by the framework: bound them. 16 MiB holds a million relabel indices.
MAX_JSON_BODY_BYTES = 16 * 1024 * 1024


class BodySizeLimitMiddleware:
    """Refuse non-multipart request bodies larger than ``max_bytes`` with 413.

    The error is raised from ``receive`` as an ``HTTPException`` so it reaches the problem
    handlers (FastAPI re-raises HTTP exceptions met while reading a body); a declared
    ``Content-Length`` over the limit is refused before any byte is read."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_JSON_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_multipart(scope):
            await self.app(scope, receive, send)
            return
        received = 0
        declared = _declared_length(scope)

        async def limited_receive() -> Message:
            nonlocal received
            if declared is not None and declared > self.max_bytes:
                raise self._too_large()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, limited_receive, send)

    def _too_large(self) -> StarletteHTTPException:
        return StarletteHTTPException(
            413, f"the request body exceeds {self.max_bytes} bytes (uploads: use multipart)"
        )


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


def _is_multipart(scope: Scope) -> bool:
    content_type = _header(scope, b"content-type") or b""
    return content_type.lower().startswith(b"multipart/form-data")


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
            logger.info("removed %d stale upload staging files", removed)
        # Celery mode: requeue or fail jobs whose worker died (worker/reaper.py).
        reaper = maybe_start_reaper(settings, app.state.session_factory, app.state.dispatcher)
        try:
            yield
        finally:
            if reaper is not None:
                reaper.close()
            app.state.dispatcher.close()
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
    app.state.session_factory = make_session_factory(engine)
    app.state.store = ArtifactStore(settings.artifacts_dir)
    app.state.catalog = BuiltinCatalog()
    if dispatcher is None and settings.effective_runner == "none":
        dispatcher = NoneDispatcher()
    app.state.dispatcher = dispatcher
    install_problem_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=MAX_JSON_BODY_BYTES)
    for router in ROUTERS:
        app.include_router(router)
    install_observability(app, app.state.session_factory)  # request ids, access log, /metrics
    return app
