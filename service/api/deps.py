"""Every FastAPI dependency of the routes, in one place: settings, database session, artifact
store, dispatcher, the authenticated owner, pagination parameters."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from service.auth import authenticate
from service.catalog import BuiltinCatalog
from service.db.models import Owner
from service.dispatch import Dispatcher
from service.problems import ProblemError
from service.settings import Settings
from service.storage import ArtifactStore

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key (`gif_…`), created with `gif-service keys create --owner NAME`.",
)


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session_factory(request: Request) -> sessionmaker[Session]:
    return request.app.state.session_factory


def get_session(request: Request) -> Iterator[Session]:
    """A session per request, rolled back if the handler did not commit."""
    with get_session_factory(request)() as session:
        yield session


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


def get_catalog(request: Request) -> BuiltinCatalog:
    return request.app.state.catalog


def get_dispatcher(request: Request) -> Dispatcher:
    dispatcher = getattr(request.app.state, "dispatcher", None)
    if dispatcher is None:
        raise ProblemError(503, "the job runner is not started yet", slug="runner-unavailable")
    return dispatcher


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(
        401, detail, slug="unauthorized", headers={"WWW-Authenticate": 'Bearer realm="gif-service"'}
    )


def current_owner(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    session: Annotated[Session, Depends(get_session)],
) -> Owner:
    """The owner of the request's bearer key; 401 when it is missing, unknown or revoked."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    owner = authenticate(session, credentials.credentials)
    # End the lookup's transaction so its pooled connection goes back now, not when the
    # response is done: handlers that open their own session (e.g. job submission) would
    # otherwise hold two connections each and exhaust the pool under concurrent requests.
    session.commit()
    if owner is None:
        raise _unauthorized("invalid or revoked API key")
    return owner


@dataclass(frozen=True)
class PageParams:
    limit: int
    after: str | None


def page_params(
    limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE_SIZE, description="Items per page (1–100).")
    ] = DEFAULT_PAGE_SIZE,
    after: Annotated[
        str | None,
        Query(max_length=100, description="The id of the last item of the previous page."),
    ] = None,
) -> PageParams:
    return PageParams(limit=limit, after=after)


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
CatalogDep = Annotated[BuiltinCatalog, Depends(get_catalog)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
OwnerDep = Annotated[Owner, Depends(current_owner)]
PageDep = Annotated[PageParams, Depends(page_params)]
