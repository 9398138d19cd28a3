"""``/healthz`` (the process answers) and ``/readyz`` (the database is reachable and migrated,
and the job runner — in distributed mode, the broker — accepts work). Unauthenticated."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from service.api.common import problem_responses
from service.api.deps import DispatcherDep, SettingsDep
from service.db.migrate import current_revision, head_revision
from service.problems import ProblemError
from service.schemas import HealthOut, ReadyOut

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut, summary="Liveness: the process is up")
def healthz() -> HealthOut:
    return HealthOut(status="ok")


def _database_problem(request: Request) -> str | None:
    engine: sa.Engine = request.app.state.engine
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        revision = current_revision(engine)
    except sa.exc.SQLAlchemyError as err:
        return f"database unreachable ({type(err).__name__})"
    if revision != head_revision():
        return f"database schema at {revision!r}, expected {head_revision()!r}: run migrations"
    return None


@router.get(
    "/readyz",
    response_model=ReadyOut,
    summary="Readiness: database (and broker, in distributed mode) reachable",
    responses=problem_responses(503),
)
async def readyz(request: Request, settings: SettingsDep, dispatcher: DispatcherDep) -> ReadyOut:
    problem = await run_in_threadpool(_database_problem, request)
    if problem is None and not await run_in_threadpool(dispatcher.ready):
        problem = f"the {settings.effective_runner} job runner is not ready (broker unreachable?)"
    if problem is not None:
        raise ProblemError(503, problem, slug="not-ready", headers={"Retry-After": "5"})
    return ReadyOut(status="ready", database="ok", runner=settings.effective_runner)
