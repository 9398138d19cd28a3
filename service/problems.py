"""RFC 9457 problem details: every error the API returns is ``application/problem+json``
``{type, title, status, detail, errors?}`` — never a stack trace, never an HTML page.

Handlers here turn framework errors (validation, 404/405 routing, database outages) and the
service's own :class:`ProblemError` into that shape; anything unforeseen becomes a generic 500
problem whose detail reveals nothing internal (the traceback goes to the log only)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.storage import ArtifactCorrupt, ArtifactMissing, UploadTooLarge

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:gif-service:problem:"
logger = logging.getLogger("service.problems")


class ErrorItem(BaseModel):
    """One located error; ``loc`` is the path to the field, e.g. ``["body", "edit", "class"]``."""

    loc: list[str | int]
    msg: str


class Problem(BaseModel):
    """The RFC 9457 error body."""

    type: str = Field(description="A URI naming the kind of problem.")
    title: str
    status: int
    detail: str
    errors: list[ErrorItem] | None = None


class ProblemError(Exception):
    """Raise anywhere in a request to answer with a problem of ``status``.

    ``slug`` names the kind (``type`` becomes ``urn:gif-service:problem:<slug>``)."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        title: str | None = None,
        errors: Sequence[tuple[Sequence[str | int], str]] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug or _default_slug(status)
        self.title = title or HTTPStatus(status).phrase
        self.errors = [ErrorItem(loc=list(loc), msg=msg) for loc, msg in errors or ()]
        self.headers = headers or {}


def _default_slug(status: int) -> str:
    return HTTPStatus(status).phrase.lower().replace(" ", "-").replace("'", "")


def not_found(kind: str, resource_id: str) -> ProblemError:
    """404 for a missing resource — also what another owner's resource answers."""
    return ProblemError(404, f"{kind} {resource_id!r} does not exist", slug="not-found")


def validation_problem(
    detail: str, errors: Sequence[tuple[Sequence[str | int], str]]
) -> ProblemError:
    """422 naming the offending fields."""
    return ProblemError(422, detail, slug="validation-error", errors=errors)


def problem_response(problem: ProblemError) -> JSONResponse:
    """The JSON response for ``problem``."""
    body = Problem(
        type=PROBLEM_TYPE_PREFIX + problem.slug,
        title=problem.title,
        status=problem.status,
        detail=problem.detail,
        errors=problem.errors or None,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=problem.headers,
    )


def _loc_item(item: Any) -> str | int:
    return item if isinstance(item, int) else str(item)


def _validation_msg(error: dict[str, Any]) -> str:
    message = str(error.get("msg", "invalid value"))
    return message.removeprefix("Value error, ")


async def _on_problem(_request: Request, exc: ProblemError) -> JSONResponse:
    return problem_response(exc)


async def _on_validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [([_loc_item(i) for i in e.get("loc", ())], _validation_msg(e)) for e in exc.errors()]
    fields = ", ".join(".".join(str(i) for i in loc) for loc, _ in errors) or "request"
    return problem_response(validation_problem(f"invalid request: {fields}", errors))


async def _on_http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and detail == "Not Found":
        detail = "no such route"
    elif exc.status_code == 405 and detail == "Method Not Allowed":
        detail = "this route does not accept that method"
    return problem_response(ProblemError(exc.status_code, detail, headers=dict(exc.headers or {})))


async def _on_database_down(_request: Request, exc: Exception) -> JSONResponse:
    logger.warning("database unavailable: %s", type(exc).__name__)
    return problem_response(
        ProblemError(
            503,
            "the database is unavailable; retry later",
            slug="database-unavailable",
            headers={"Retry-After": "5"},
        )
    )


async def _on_bad_value(_request: Request, exc: Exception) -> JSONResponse:
    # e.g. PostgreSQL refusing a NUL character in an id or a name: the client's input.
    logger.info("database refused a value: %s", type(exc).__name__)
    return problem_response(
        ProblemError(422, "a value in the request cannot be stored or looked up (e.g. a NUL "
                     "character)", slug="invalid-value")
    )


async def _on_conflict(_request: Request, exc: Exception) -> JSONResponse:
    logger.info("integrity conflict: %s", type(exc).__name__)
    return problem_response(
        ProblemError(409, "the request conflicts with a concurrent change; retry it",
                     slug="conflict")
    )


async def _on_too_large(_request: Request, exc: UploadTooLarge) -> JSONResponse:
    return problem_response(ProblemError(413, str(exc), slug="upload-too-large"))


async def _on_artifact_error(_request: Request, exc: Exception) -> JSONResponse:
    logger.error("artifact store: %s", exc)
    return problem_response(
        ProblemError(500, "a stored file failed its integrity check", slug="artifact-integrity")
    )


async def _on_unexpected(_request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error", exc_info=exc)
    return problem_response(
        ProblemError(500, "internal error; it has been logged", slug="internal-error")
    )


def install_problem_handlers(app: FastAPI) -> None:
    """Route every kind of error through the handlers above."""
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(sa.exc.OperationalError, _on_database_down)
    app.add_exception_handler(sa.exc.InterfaceError, _on_database_down)
    app.add_exception_handler(sa.exc.TimeoutError, _on_database_down)
    app.add_exception_handler(sa.exc.DataError, _on_bad_value)
    app.add_exception_handler(sa.exc.IntegrityError, _on_conflict)
    app.add_exception_handler(UploadTooLarge, _on_too_large)
    app.add_exception_handler(ArtifactCorrupt, _on_artifact_error)
    app.add_exception_handler(ArtifactMissing, _on_artifact_error)
    app.add_exception_handler(Exception, _on_unexpected)
