"""Every FastAPI dependency of the routes, in one place: settings, database session, artifact
store, dispatcher, the authenticated owner, pagination parameters, ``If-None-Match``.

Authentication happens before any of these, and before any body is read: FastAPI reads a
route's body before it solves its dependencies, so a dependency would come too late. The app's
``AuthenticationMiddleware`` checks the key first and leaves the owner in the request's state;
``current_owner`` hands it to the route (and declares the ``Bearer`` scheme in OpenAPI).

The dependencies that only read ``app.state`` or the request are ``async def``: FastAPI runs a
plain ``def`` dependency in the thread pool, and a hop there (a thread wake-up under the GIL)
costs more than the whole lookup — five of them made a third of a submission's latency."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from service.auth import EXPECTED_HEADER, Caller
from service.catalog import BuiltinCatalog
from service.dispatch import Dispatcher
from service.problems import ProblemError, unauthorized
from service.settings import Settings
from service.storage import ArtifactStore

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
# Set by the app's AuthenticationMiddleware in the request's state: the owner of the key, or
# why there is none (NotAuthenticated, or the lookup's own error).
OWNER_STATE_KEY = "owner"
AUTH_FAILURE_STATE_KEY = "auth_failure"

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key (`gif_…`), created with `gif-service keys create --owner NAME`.",
)


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_session_factory(request: Request) -> sessionmaker[Session]:
    return request.app.state.session_factory


def get_session(request: Request) -> Iterator[Session]:
    """A session per request, rolled back if the handler did not commit."""
    with request.app.state.session_factory() as session:
        yield session


async def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


async def get_catalog(request: Request) -> BuiltinCatalog:
    return request.app.state.catalog


def app_dispatcher(request: Request) -> Dispatcher:
    """The app's dispatcher; 503 while it is not started."""
    dispatcher = getattr(request.app.state, "dispatcher", None)
    if dispatcher is None:
        raise ProblemError(503, "the job runner is not started yet", slug="runner-unavailable")
    return dispatcher


async def get_dispatcher(request: Request) -> Dispatcher:
    return app_dispatcher(request)


async def current_owner(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The owner of the request's bearer key, as the ``AuthenticationMiddleware`` found it
    before anything of the request was read; raises what it found instead (401 for a missing,
    unknown or revoked key). Its lookup session is closed, so no handler holds a database
    connection for it."""
    state = request.scope.get("state", {})
    failure = state.get(AUTH_FAILURE_STATE_KEY)
    if failure is not None:
        raise failure
    owner = state.get(OWNER_STATE_KEY)
    if owner is None:  # only for an app built without the middleware
        raise unauthorized(f"missing API key: send {EXPECTED_HEADER}")
    return owner


@dataclass(frozen=True)
class IfNoneMatch:
    """The entity tags of ``If-None-Match`` (RFC 9110 §13.1.2: weak comparison, ``*``)."""

    tags: frozenset[str]

    def matches(self, etag: str) -> bool:
        """Whether a representation with ``etag`` (a quoted strong tag) is not modified."""
        return "*" in self.tags or etag.removeprefix("W/") in self.tags


async def if_none_match(
    header: Annotated[
        str | None,
        Header(
            alias="If-None-Match",
            max_length=8192,
            description="Answer 304 when the ETag matches (weak comparison; * matches any).",
        ),
    ] = None,
) -> IfNoneMatch:
    tags = (tag.strip().removeprefix("W/") for tag in (header or "").split(","))
    return IfNoneMatch(frozenset(tag for tag in tags if tag))


@dataclass(frozen=True)
class PageParams:
    limit: int
    after: str | None


async def page_params(
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
OwnerDep = Annotated[Caller, Depends(current_owner)]
PageDep = Annotated[PageParams, Depends(page_params)]
IfNoneMatchDep = Annotated[IfNoneMatch, Depends(if_none_match)]
