"""Helpers shared by the resource routers: cursor pagination, owner-scoped lookups, the
OpenAPI description of problem responses."""

from __future__ import annotations

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


def paginate(
    session: Session, query: sa.Select, entity: type[Row], page: PageParams
) -> tuple[list[Row], bool]:
    """Newest first by ``(created_at, id)``; ``page.after`` is the id of the previous page's
    last item, looked up within ``query`` (so another owner's id is unknown here too)."""
    created = entity.created_at  # type: ignore[attr-defined]
    ident = entity.id  # type: ignore[attr-defined]
    if page.after is not None:
        cursor = session.execute(query.where(ident == page.after)).scalar_one_or_none()
        if cursor is None:
            raise validation_problem(
                f"unknown cursor {page.after!r}",
                [(("query", "after"), "not the id of an item of this list")],
            )
        query = query.where(
            sa.or_(
                created < cursor.created_at,
                sa.and_(created == cursor.created_at, ident < cursor.id),
            )
        )
    rows = list(
        session.execute(query.order_by(created.desc(), ident.desc()).limit(page.limit + 1))
        .scalars()
        .all()
    )
    return rows[: page.limit], len(rows) > page.limit


def get_owned(session: Session, entity: type[Row], kind: str, owner_id: str, row_id: str) -> Row:
    """The row ``row_id`` of ``entity`` if ``owner_id`` owns it and it is not deleted; else 404."""
    row = find_owned(session, entity, owner_id, row_id)
    if row is None:
        raise not_found(kind, row_id)
    return row
