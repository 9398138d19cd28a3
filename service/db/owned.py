"""The one "owned by this owner and not deleted" rule: every owner-scoped read (a route's
lookup, a list, a job's validation) goes through these functions."""

from __future__ import annotations

from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

Row = TypeVar("Row")


def owned_rows(entity: type[Any], owner_id: str) -> sa.Select:
    """``SELECT entity`` limited to ``owner_id``'s rows that are not deleted."""
    query = sa.select(entity).where(entity.owner_id == owner_id)
    deleted_at = getattr(entity, "deleted_at", None)
    return query if deleted_at is None else query.where(deleted_at.is_(None))


def owned_condition(entity: type[Any], row_id: str = "row_id") -> sa.ColumnElement[bool]:
    """The row whose id is the bind parameter ``row_id``, owned by ``:owner_id``, not deleted
    (for a prebuilt statement: a join's condition, or :func:`owned_columns`'s)."""
    condition = sa.and_(
        entity.id == sa.bindparam(row_id), entity.owner_id == sa.bindparam("owner_id")
    )
    deleted_at = getattr(entity, "deleted_at", None)
    return condition if deleted_at is None else sa.and_(condition, deleted_at.is_(None))


def owned_columns(entity: type[Any], *columns: Any) -> sa.Select:
    """``SELECT columns`` of the row ``:row_id`` if ``:owner_id`` owns it and it is not deleted
    — a statement to build once (at import) and run with :func:`find_owned_columns`, for a hot
    path that needs a few columns and no ORM object."""
    return sa.select(*columns).where(owned_condition(entity))


def find_owned_columns(
    db: Session | sa.Connection, statement: sa.Select, owner_id: str, row_id: str
) -> sa.Row | None:
    """The row of an :func:`owned_columns` statement, or None (missing, another owner's or
    deleted: indistinguishable)."""
    return db.execute(statement, {"row_id": row_id, "owner_id": owner_id}).first()


def find_owned(session: Session, entity: type[Row], owner_id: str, row_id: str) -> Row | None:
    """The row ``row_id`` if ``owner_id`` owns it and it is not deleted; else None (another
    owner's row and a deleted one are indistinguishable from a missing one)."""
    row = session.get(entity, row_id)
    if (
        row is None
        or row.owner_id != owner_id  # type: ignore[attr-defined]
        or getattr(row, "deleted_at", None) is not None
    ):
        return None
    return row
