"""What a job list shows and filters on (docs/api.md Jobs, Limits): the job summary, bounded
whatever the request holds, and the filters ``status``, ``model_id``, ``method`` and
``metadata[key]=value`` (several combine with AND).

A list never reads the stored ``request`` (a million indices) nor the ``result``: the summary
comes from the columns filled at submission (``method``, ``edit_summary``, ``metadata``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import defer
from starlette.datastructures import QueryParams

from service.db.models import Job
from service.db.owned import owned_rows
from service.jobs.summary import job_summary
from service.problems import validation_problem
from service.schemas import (
    MAX_METADATA_KEY_LENGTH,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE_LENGTH,
    METADATA_KEY_PATTERN,
)

__all__ = ["METADATA_PARAMETER", "JobFilters", "job_summary", "metadata_filters",
           "summary_query"]

METADATA_FILTER = re.compile(r"^metadata\[(.*)\]$", re.DOTALL)
METADATA_KEY = re.compile(METADATA_KEY_PATTERN)

# The OpenAPI description of ``metadata[key]=value`` (a deepObject: FastAPI cannot declare a
# family of parameters, so the route reads them from the query string itself).
METADATA_PARAMETER = {
    "name": "metadata",
    "in": "query",
    "required": False,
    "style": "deepObject",
    "explode": True,
    "description": f"`metadata[key]=value`: only jobs whose metadata has this pair; several "
                   f"combine with AND (at most {MAX_METADATA_KEYS}).",
    "schema": {"type": "object", "additionalProperties": {"type": "string"}},
}


@dataclass(frozen=True)
class JobFilters:
    status: str | None = None
    model_id: str | None = None
    method: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()


def metadata_filters(params: QueryParams) -> tuple[tuple[str, str], ...]:
    """The ``metadata[key]=value`` pairs of a query string, bounded like metadata itself."""
    pairs = []
    for name, value in params.multi_items():
        match = METADATA_FILTER.match(name)
        if match is None:
            continue
        key = match.group(1)
        loc = ("query", name[:100])
        if not 1 <= len(key) <= MAX_METADATA_KEY_LENGTH or not METADATA_KEY.match(key):
            raise validation_problem(f"metadata keys have 1 to {MAX_METADATA_KEY_LENGTH} "
                                     "letters, digits or _-.:/", [(loc, "bad metadata key")])
        if len(value) > MAX_METADATA_VALUE_LENGTH:
            raise validation_problem(f"metadata values have at most "
                                     f"{MAX_METADATA_VALUE_LENGTH} characters",
                                     [(loc, "metadata value too long")])
        pairs.append((key, value))
        if len(pairs) > MAX_METADATA_KEYS:
            raise validation_problem(f"at most {MAX_METADATA_KEYS} metadata filters",
                                     [(("query", "metadata"), "too many metadata filters")])
    return tuple(pairs)


def summary_query(owner_id: str, filters: JobFilters) -> sa.Select:
    """The owner's jobs matching ``filters``, without loading the big columns."""
    query = owned_rows(Job, owner_id).options(defer(Job.request), defer(Job.result))
    if filters.status is not None:
        query = query.where(Job.status == filters.status)
    if filters.model_id is not None:
        query = query.where(Job.model_id == filters.model_id)
    if filters.method is not None:
        query = query.where(Job.method == filters.method)
    for key, value in filters.metadata:
        query = query.where(Job.job_metadata[key].as_string() == value)
    return query
