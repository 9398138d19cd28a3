"""``GET /v1/erasures``: the owner's erasure records, newest first (docs/api.md "Deletion is
erasure"), and :func:`erase_by_request`, what the three ``DELETE`` routes call."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from service.api.common import AUTH_PROBLEMS, paginate
from service.api.deps import OwnerDep, PageDep, SessionDep
from service.auth import Caller
from service.db.models import Erasure
from service.erasure import erase
from service.schemas import ErasureOut, Page
from service.storage import ArtifactStore

router = APIRouter(prefix="/v1/erasures", tags=["erasures"], responses=AUTH_PROBLEMS)


def _erase_now(factory: sessionmaker[Session], store: ArtifactStore, kind: str,
               caller: Caller, object_id: str) -> Erasure:
    return erase(factory, store, kind, caller.id, object_id, reason="request",
                 api_key_id=caller.key_id)


async def erase_by_request(request: Request, kind: str, owner: Caller, object_id: str) -> None:
    """Erase ``kind`` ``object_id`` of ``owner`` for this request (404/409 problems), recorded
    with the key that asked."""
    state = request.app.state
    await run_in_threadpool(_erase_now, state.session_factory, state.store, kind, owner,
                            object_id)


@router.get("", response_model=Page[ErasureOut],
            summary="List erasure records, newest first (no content of what was erased)")
def list_erasures(owner: OwnerDep, session: SessionDep, page: PageDep) -> Page[ErasureOut]:
    query = sa.select(Erasure).where(Erasure.owner_id == owner.id)
    window = paginate(session, query, Erasure, page, owner.id)
    return Page[ErasureOut](data=[ErasureOut.model_validate(r) for r in window.rows],
                            has_more=window.has_more, next_cursor=window.next_cursor)
