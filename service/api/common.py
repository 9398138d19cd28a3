"""Helpers shared by the resource routers: cursor pagination, owner-scoped lookups, the
OpenAPI description of problem responses."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.api.deps import PageParams
from service.db.owned import find_owned
from service.problems import PROBLEM_MEDIA_TYPE, Problem, not_found, validation_problem

Row = TypeVar("Row")


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries declaring problem+json bodies for ``statuses``."""
    return {
        status: {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}, "description": "Problem"}
        for status in statuses
    }


AUTH_PROBLEMS = problem_responses(401, 422, 503)


CURSOR_PREFIX = "cur_"


@dataclass(frozen=True)
class Window:
    """One page of rows: ``has_more`` and the ``next_cursor`` that continues after them."""

    rows: list[Any]
    has_more: bool
    next_cursor: str | None


def encode_cursor(created_at: datetime, ident: str) -> str:
    """An opaque cursor holding the position ``(created_at, id)`` itself — not a row to find
    again, so it outlives the deletion of its item and the item's leaving a filter."""
    raw = json.dumps([created_at.isoformat(), ident], separators=(",", ":")).encode()
    return CURSOR_PREFIX + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _bad_cursor(after: str) -> Exception:
    return validation_problem(
        f"unknown cursor {after[:100]!r}",
        [(("query", "after"), "not a next_cursor of this list, nor the id of one of its items")],
    )


def decode_cursor(after: str) -> tuple[datetime, str]:
    """The position in an :func:`encode_cursor` token; a 422 for anything else."""
    try:
        token = after.removeprefix(CURSOR_PREFIX)
        created, ident = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        moment = datetime.fromisoformat(created)
        if not isinstance(ident, str) or moment.tzinfo is None:
            raise ValueError("not a cursor")
    except (ValueError, TypeError, binascii.Error):
        raise _bad_cursor(after) from None
    return moment, ident


def _position(
    session: Session, entity: type[Any], owner_id: str, after: str
) -> tuple[datetime, str]:
    """Where ``after`` points: a cursor's own position, or the position of the owner's item
    with that id, whatever its state now (deleted, or out of the list's filter)."""
    if after.startswith(CURSOR_PREFIX):
        return decode_cursor(after)
    row = session.execute(
        sa.select(entity.created_at, entity.id).where(
            entity.id == after, entity.owner_id == owner_id
        )
    ).one_or_none()
    if row is None:
        raise _bad_cursor(after)
    return row[0], row[1]


def paginate(
    session: Session, query: sa.Select, entity: type[Row], page: PageParams, owner_id: str
) -> Window:
    """Newest first by ``(created_at, id)`` (keyset pagination); ``page.after`` is a
    ``next_cursor`` or the id of an item of ``owner_id``'s (another owner's id is unknown)."""
    created = entity.created_at  # type: ignore[attr-defined]
    ident = entity.id  # type: ignore[attr-defined]
    if page.after is not None:
        moment, last_id = _position(session, entity, owner_id, page.after)
        query = query.where(
            sa.or_(created < moment, sa.and_(created == moment, ident < last_id))
        )
    rows = list(
        session.execute(query.order_by(created.desc(), ident.desc()).limit(page.limit + 1))
        .scalars()
        .all()
    )
    has_more = len(rows) > page.limit
    rows = rows[: page.limit]
    cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if has_more else None  # type: ignore[attr-defined]
    return Window(rows, has_more, cursor)


def get_owned(session: Session, entity: type[Row], kind: str, owner_id: str, row_id: str) -> Row:
    """The row ``row_id`` of ``entity`` if ``owner_id`` owns it and it is not deleted; else 404."""
    row = find_owned(session, entity, owner_id, row_id)
    if row is None:
        raise not_found(kind, row_id)
    return row
