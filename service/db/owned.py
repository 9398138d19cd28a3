"""The one "owned by this owner and not deleted" rule: every owner-scoped read (a route's
lookup, a list, a job's validation) goes through these two functions."""

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
