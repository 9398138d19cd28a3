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

from service.api import ROUTERS
from service.catalog import BuiltinCatalog
from service.db.session import engine_from_settings, make_session_factory
from service.dispatch import Dispatcher, NoneDispatcher, make_dispatcher
from service.observability import install_observability
from service.problems import install_problem_handlers
from service.settings import Settings
from service.storage import ArtifactStore

logger = logging.getLogger("service.app")

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
        try:
            yield
        finally:
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
    for router in ROUTERS:
        app.include_router(router)
    install_observability(app, app.state.session_factory)  # request ids, access log, /metrics
    return app
