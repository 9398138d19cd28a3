"""RFC 9457 problem details: every error the API returns is ``application/problem+json``
``{type, title, status, detail, errors?}`` — never a stack trace, never an HTML page.

Handlers here turn framework errors (validation, 404/405 routing, database outages) and the
service's own :class:`ProblemError` into that shape; anything unforeseen becomes a generic 500
problem whose detail reveals nothing internal (the traceback goes to the log only).
:func:`problem_for_exception` applies the same handlers to an exception met elsewhere
(:class:`BodyRefused`: a body read refused because the request is not authenticated).

A response is bounded whatever the input: ``errors`` lists at most ``MAX_PROBLEM_ERRORS``
items and says how many it left out (``errors_omitted``). A schema error's ``detail`` says what
is wrong, not only where; an unknown field or value gets the closest valid name (``did you
mean 'solver'?``); locations never contain a discriminated union's tag, so ``class: -1`` and
``class: 10`` are both at ``body.edit.class``."""

from __future__ import annotations

import difflib
import logging
import re
import types
import typing
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.auth import NotAuthenticated
from service.storage import (
    ArtifactCorrupt,
    ArtifactMissing,
    ContentGone,
    InsufficientStorage,
    UploadTooLarge,
    is_disk_full,
)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:gif-service:problem:"
MAX_PROBLEM_ERRORS = 20  # items of ``errors``; the rest are counted in ``errors_omitted``
MAX_DETAIL_ERRORS = 3  # errors spelled out in a validation problem's ``detail``
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
    errors_omitted: int | None = Field(
        None, description=f"How many errors past the first {MAX_PROBLEM_ERRORS} are not listed."
    )


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
        listed = list(errors or ())
        self.errors = [ErrorItem(loc=list(loc), msg=msg) for loc, msg in
                       listed[:MAX_PROBLEM_ERRORS]]
        self.errors_omitted = max(len(listed) - MAX_PROBLEM_ERRORS, 0)
        self.headers = headers or {}


def _default_slug(status: int) -> str:
    return HTTPStatus(status).phrase.lower().replace(" ", "-").replace("'", "")


class BodyRefused(StarletteHTTPException):
    """Raised by ``receive`` when a request's body may not be read: ``failure`` says why (a
    :class:`~service.auth.NotAuthenticated`, a database error). An HTTP exception, so FastAPI
    passes it on from its body reading unchanged; answered as ``failure`` would be."""

    def __init__(self, failure: Exception):
        super().__init__(401, "the request is not authenticated")
        self.failure = failure


def not_found(kind: str, resource_id: str) -> ProblemError:
    """404 for a missing resource — also what another owner's resource answers."""
    return ProblemError(404, f"{kind} {resource_id!r} does not exist", slug="not-found")


def validation_problem(
    detail: str, errors: Sequence[tuple[Sequence[str | int], str]]
) -> ProblemError:
    """422 naming the offending fields."""
    return ProblemError(422, detail, slug="validation-error", errors=errors)


def unauthorized(detail: str) -> ProblemError:
    """401 with the ``Bearer`` challenge (RFC 6750)."""
    return ProblemError(
        401, detail, slug="unauthorized", headers={"WWW-Authenticate": 'Bearer realm="gif-service"'}
    )


# ------------------------------------------------------------------ schema errors, explained

Loc = tuple[str | int, ...]


def _strip(annotation: Any) -> Any:
    """``Annotated[X, ...]`` → ``X``; ``X | None`` → ``X``."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if _is_union(annotation):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _strip(members[0])
    return annotation


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _model(annotation: Any) -> type[BaseModel] | None:
    annotation = _strip(annotation)
    is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
    return annotation if is_model else None


def _field_names(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _union_member(annotation: Any, item: str | int) -> type[BaseModel] | None:
    """The member of a union of models that ``item`` (a loc entry) names: its tag (the value
    of a ``Literal`` field, as a discriminated union puts in the loc) or its class name."""
    if not isinstance(item, str) or not _is_union(_strip(annotation)):
        return None
    for member in typing.get_args(_strip(annotation)):
        model = _model(member)
        if model is None:
            continue
        if item == model.__name__:
            return model
        for info in model.model_fields.values():
            if typing.get_origin(info.annotation) is typing.Literal and item in typing.get_args(
                info.annotation
            ):
                return model
    return None


def _child(annotation: Any, item: str | int) -> Any:
    """The annotation one loc step below ``annotation`` (None when unknown)."""
    model = _model(annotation)
    if model is not None:
        for name, info in model.model_fields.items():
            if item in (name, info.alias):
                return info.annotation
        return None
    annotation = _strip(annotation)
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (list, tuple, set, frozenset) and args:
        return args[0]
    if typing.get_origin(annotation) is dict and len(args) == 2:
        return args[1]
    return None


def _walk(root: Any, loc: Sequence[str | int]) -> tuple[Loc, Any]:
    """``loc`` without discriminated-union tags, and the annotation of its parent."""
    kept: list[str | int] = []
    current, parent = root, None
    for item in loc:
        member = _union_member(current, item) if current is not None else None
        if member is not None:
            current = member
            continue
        kept.append(item)
        parent, current = current, (_child(current, item) if current is not None else None)
    return tuple(kept), parent


def _suggestion(word: Any, candidates: Sequence[str]) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _quoted(text: Any) -> list[str]:
    return re.findall(r"'([^']*)'", str(text or ""))


def _explain(error: dict[str, Any], loc: Loc, parent: Any) -> str:
    """What is wrong, in words, with the closest valid name for a typo."""
    kind = error.get("type", "")
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden" and loc:
        model = _model(parent)
        names = _field_names(model) if model is not None else []
        hint = _suggestion(loc[-1], names) or (f" (allowed: {', '.join(names)})" if names else "")
        return f"unknown field {str(loc[-1])!r}{hint}"
    if kind == "missing":
        return "required"
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if kind == "union_tag_invalid":
        return message + _suggestion(ctx.get("tag"), _quoted(ctx.get("expected_tags")))
    if kind in ("literal_error", "enum"):
        return message + _suggestion(value, _quoted(ctx.get("expected")))
    return message


def explain_validation_errors(
    errors: Sequence[dict[str, Any]], root: Any = None, prefix: Loc = ()
) -> list[tuple[Loc, str]]:
    """pydantic/FastAPI ``errors()`` as ``(loc, msg)``: locations under ``prefix`` are walked
    through ``root`` (the model validated there) to drop union tags and to name the fields a
    typo may have meant. Only the first ``MAX_PROBLEM_ERRORS + 1`` are explained (the rest are
    only counted)."""
    explained = []
    for index, error in enumerate(errors):
        raw = tuple(error.get("loc", ()))
        if index > MAX_PROBLEM_ERRORS:
            explained.append((raw, ""))
            continue
        inner = raw[len(prefix):] if raw[: len(prefix)] == prefix else None
        if inner is None or root is None:
            loc, parent = raw, None
        else:
            kept, parent = _walk(root, inner)
            loc = (*prefix, *kept)
        explained.append(
            (tuple(i if isinstance(i, int) else str(i) for i in loc), _explain(error, loc, parent))
        )
    return explained


def validation_summary(what: str, errors: Sequence[tuple[Loc, str]]) -> str:
    """``"<what>: body.solvr: unknown field 'solvr' (did you mean 'solver'?)"``: the first few
    errors spelled out, then how many more there are."""
    shown = [f"{'.'.join(str(i) for i in loc) or 'request'}: {msg}"
             for loc, msg in errors[:MAX_DETAIL_ERRORS]]
    more = len(errors) - MAX_DETAIL_ERRORS
    return f"{what}: " + "; ".join(shown) + (f" (and {more} more)" if more > 0 else "")


def problem_response(problem: ProblemError) -> JSONResponse:
    """The JSON response for ``problem``."""
    body = Problem(
        type=PROBLEM_TYPE_PREFIX + problem.slug,
        title=problem.title,
        status=problem.status,
        detail=problem.detail,
        errors=problem.errors or None,
        errors_omitted=problem.errors_omitted or None,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=problem.headers,
    )


async def _on_problem(_request: Request, exc: ProblemError) -> JSONResponse:
    return problem_response(exc)


async def _on_not_authenticated(_request: Request, exc: NotAuthenticated) -> JSONResponse:
    return problem_response(unauthorized(str(exc)))


async def _on_body_refused(request: Request, exc: BodyRefused) -> JSONResponse:
    return await problem_for_exception(request, exc.failure)


def _body_model(request: Request) -> Any:
    """The model a route validates its JSON body with (None: no body, or unknown)."""
    field = getattr(request.scope.get("route"), "body_field", None)
    return getattr(getattr(field, "field_info", None), "annotation", None)


async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = explain_validation_errors(exc.errors(), _body_model(request), ("body",))
    return problem_response(validation_problem(validation_summary("invalid request", errors),
                                               errors))


async def _on_http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and detail == "Not Found":
        detail = "no such route"
    elif exc.status_code == 405 and detail == "Method Not Allowed":
        detail = "this route does not accept that method"
    return problem_response(ProblemError(exc.status_code, detail, headers=dict(exc.headers or {})))


def insufficient_storage() -> ProblemError:
    """507: the disk is full (docs/erasure.md: deleting frees space at once)."""
    return ProblemError(
        507,
        "the server's storage is full: delete models, datasets or jobs you no longer need "
        "(space is freed at once), or ask the operator for more",
        slug="insufficient-storage",
    )


async def _on_insufficient_storage(_request: Request, exc: Exception) -> JSONResponse:
    logger.warning("storage full: %s", exc)
    return problem_response(insufficient_storage())


async def _on_os_error(request: Request, exc: OSError) -> JSONResponse:
    if is_disk_full(exc):
        return await _on_insufficient_storage(request, exc)
    return await _on_unexpected(request, exc)


async def _on_content_gone(_request: Request, exc: Exception) -> JSONResponse:
    logger.info("upload raced an erasure of identical bytes: %s", exc)
    return problem_response(
        ProblemError(503, "the uploaded file was removed by a concurrent deletion of identical "
                     "content; send it again", slug="upload-raced-deletion",
                     headers={"Retry-After": "1"})
    )


async def _on_database_down(request: Request, exc: Exception) -> JSONResponse:
    if is_disk_full(exc):
        return await _on_insufficient_storage(request, exc)
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


Handler = Callable[[Request, Any], Awaitable[JSONResponse]]
_HANDLERS: dict[type[BaseException], Handler] = {
    ProblemError: _on_problem,
    NotAuthenticated: _on_not_authenticated,
    BodyRefused: _on_body_refused,
    RequestValidationError: _on_validation,
    StarletteHTTPException: _on_http,
    sa.exc.OperationalError: _on_database_down,
    sa.exc.InterfaceError: _on_database_down,
    sa.exc.TimeoutError: _on_database_down,
    sa.exc.DataError: _on_bad_value,
    sa.exc.IntegrityError: _on_conflict,
    UploadTooLarge: _on_too_large,
    InsufficientStorage: _on_insufficient_storage,
    ContentGone: _on_content_gone,
    OSError: _on_os_error,
    ArtifactCorrupt: _on_artifact_error,
    ArtifactMissing: _on_artifact_error,
    Exception: _on_unexpected,
}


def install_problem_handlers(app: FastAPI) -> None:
    """Route every kind of error through the handlers above."""
    for exc_type, handler in _HANDLERS.items():
        app.add_exception_handler(exc_type, handler)


async def problem_for_exception(request: Request, exc: Exception) -> JSONResponse:
    """The problem response the app's handlers give ``exc`` (most specific class first, as
    Starlette picks them)."""
    for cls in type(exc).__mro__:
        if cls in _HANDLERS:
            return await _HANDLERS[cls](request, exc)
    return await _on_unexpected(request, exc)  # pragma: no cover - Exception is registered
