"""Observability for the API and the worker: structured JSON logs and Prometheus metrics.

Logs: one JSON object per line (time, level, logger, message, request_id, job_id, and any
``extra=`` fields). ``configure_logging`` is the one set-up function the API (``gif-service
serve``) and the worker (``gif-service worker``) call. Secrets never reach a log line: the
formatter redacts bearer tokens and API keys (``gif_…``) wherever they appear, and the access
log written here records method, route, status and duration, never headers.

Metrics (``GET /metrics``, Prometheus text format, unauthenticated like ``/healthz``):

- ``gif_http_requests_total{method,route,status}`` and
  ``gif_http_request_duration_seconds{method,route}`` — counted in this API process;
  ``route`` is the route template (``/v1/jobs/{job_id}``), so ids never explode the series.
- ``gif_jobs{status}``, ``gif_jobs_queued`` (queue depth) and
  ``gif_job_duration_seconds{status}`` (started → finished, terminal jobs) — read from the
  database at scrape time. The job row is the source of truth (docs/design.md), and the
  workers are other processes on other machines, so the API reports what the database holds;
  every API replica reports the same numbers.

No global state: each ``create_app`` builds its own ``ServiceMetrics`` with its own registry.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from service.db.models import JOB_STATUSES, TERMINAL_STATUSES

__all__ = [
    "CONTENT_TYPE_LATEST",
    "JOB_DURATION_BUCKETS",
    "JOB_STATUSES",
    "JobStats",
    "JsonFormatter",
    "ObservabilityMiddleware",
    "ServiceMetrics",
    "configure_logging",
    "current_job_id",
    "current_request_id",
    "job_context",
    "redact",
    "uvicorn_log_config",
]

# Edits take from seconds (tiny nets) to hours (the job time limit is 6 h by default).
JOB_DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
                        7200.0, 21600.0)
REQUEST_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "gif_request_id", default=None
)
_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("gif_job_id", default=None)


def current_request_id() -> str | None:
    """The id of the HTTP request being handled in this context (``X-Request-ID``), if any."""
    return _request_id.get()


def current_job_id() -> str | None:
    """The job being worked on in this context (set by ``job_context``), if any."""
    return _job_id.get()


@contextlib.contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Tag every log record emitted inside the block with ``job_id`` (the worker wraps
    ``execute_job`` in it; contextvars keep concurrent jobs/requests apart)."""
    token = _job_id.set(job_id)
    try:
        yield
    finally:
        _job_id.reset(token)


# ---------------------------------------------------------------------------------------------
# Logging


# Bearer credentials (RFC 6750 b64token characters) and this service's API keys
# (``gif_`` + a long token; short names like ``gif_service`` are left alone).
_SECRET_PATTERNS = (
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1[REDACTED]"),
    (re.compile(r"\bgif_[A-Za-z0-9_-]{16,}"), "gif_[REDACTED]"),
)
_SENSITIVE_KEYS = re.compile(r"(?i)^(authorization|api[_-]?key|x-api-key|token|password|secret)$")


def redact(text: str) -> str:
    """``text`` with every bearer token and API key replaced by ``[REDACTED]``."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(key: str, value: Any) -> Any:
    """A JSON-able, secret-free copy of an ``extra=`` value (sensitive keys blanked whole)."""
    if _SENSITIVE_KEYS.match(key):
        return "[REDACTED]"
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {str(k): _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value("", v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(repr(value))


# Attributes every LogRecord has; anything else on a record came from ``extra=``
# (uvicorn's ``color_message`` is its message again with terminal colour codes: dropped).
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "color_message",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (ISO-8601 UTC), ``level``, ``logger``, ``message``,
    ``request_id`` / ``job_id`` when known, ``exc`` for exceptions, plus ``extra=`` fields —
    all passed through ``redact`` so no key or Authorization header is ever written."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        request_id = getattr(record, "request_id", None) or current_request_id()
        job_id = getattr(record, "job_id", None) or current_job_id()
        if request_id:
            entry["request_id"] = request_id
        if job_id:
            entry["job_id"] = job_id
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and key not in entry and not key.startswith("_"):
                entry[key] = _redact_value(key, value)
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc"] = redact(record.exc_text)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str | int = "INFO", *, stream: TextIO | None = None) -> None:
    """Send every logger (ours, uvicorn's, Celery's, SQLAlchemy's) through one JSON handler
    on ``stream`` (stderr by default). Idempotent: calling it again replaces the handler."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_gif_json", False):
            root.removeHandler(old)
    handler._gif_json = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    # Their own handlers would print a second, non-JSON copy; let records reach the root.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task"):
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True


def uvicorn_log_config(level: str = "INFO") -> dict:
    """A ``log_config`` for ``uvicorn.run`` that makes uvicorn log JSON like the rest.

    Its access log is off: ``ObservabilityMiddleware`` writes one access line per request
    with the route template and the request id (and never headers)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "json",
                        "stream": "ext://sys.stderr"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }


# ---------------------------------------------------------------------------------------------
# Metrics


@dataclass(frozen=True)
class JobStats:
    """What the database says about jobs at scrape time."""

    by_status: dict[str, int]
    # (status, seconds from started_at to finished_at) of every terminal job that ran.
    durations: list[tuple[str, float]]


def _histogram_buckets(
    values: Iterable[float], bounds: tuple[float, ...]
) -> list[tuple[str, float]]:
    """Cumulative Prometheus buckets (``le`` labels, ``+Inf`` last) of ``values``."""
    ordered = sorted(values)
    buckets, index = [], 0
    for bound in bounds:
        while index < len(ordered) and ordered[index] <= bound:
            index += 1
        buckets.append((repr(float(bound)), float(index)))
    buckets.append(("+Inf", float(len(ordered))))
    return buckets


class _JobCollector:
    """Prometheus collector that reads job gauges and the duration histogram from the
    database on every scrape (``read_stats``). A database that cannot be read gives
    ``gif_metrics_database_up 0`` and no job series, never a failed scrape."""

    def __init__(self, read_stats: Callable[[], JobStats]):
        self._read_stats = read_stats

    def collect(self) -> Iterator[Metric]:
        try:
            stats = self._read_stats()
        except Exception:  # noqa: BLE001 - a scrape must answer even when the DB does not
            logging.getLogger(__name__).warning("metrics: could not read job statistics",
                                                exc_info=True)
            yield GaugeMetricFamily("gif_metrics_database_up",
                                    "1 if the last scrape could read the jobs table", value=0)
            return
        yield GaugeMetricFamily("gif_metrics_database_up",
                                "1 if the last scrape could read the jobs table", value=1)
        jobs = GaugeMetricFamily("gif_jobs", "Jobs in the database by status",
                                 labels=["status"])
        for status in JOB_STATUSES:
            jobs.add_metric([status], float(stats.by_status.get(status, 0)))
        yield jobs
        yield GaugeMetricFamily("gif_jobs_queued",
                                "Queue depth: jobs accepted and not yet started",
                                value=float(stats.by_status.get("queued", 0)))
        duration = HistogramMetricFamily(
            "gif_job_duration_seconds",
            "Wall time of finished jobs from start to finish, by final status",
            labels=["status"],
        )
        for status in TERMINAL_STATUSES:
            seconds = [s for st, s in stats.durations if st == status]
            duration.add_metric([status], _histogram_buckets(seconds, JOB_DURATION_BUCKETS),
                                sum_value=float(sum(seconds)))
        yield duration


class ServiceMetrics:
    """The API's Prometheus registry: HTTP counters/latency observed by the middleware and
    the job collector. One instance per app (tests build many apps in one process)."""

    def __init__(self, read_job_stats: Callable[[], JobStats] | None = None):
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "gif_http_requests", "HTTP requests by method, route template and status",
            labelnames=("method", "route", "status"), registry=self.registry,
        )
        self.latency = Histogram(
            "gif_http_request_duration_seconds",
            "HTTP request latency by method and route template",
            labelnames=("method", "route"), buckets=REQUEST_DURATION_BUCKETS,
            registry=self.registry,
        )
        if read_job_stats is not None:
            self.registry.register(_JobCollector(read_job_stats))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        """The registry in Prometheus text exposition format."""
        return generate_latest(self.registry)


def read_job_stats_from_db(session_factory: Callable[[], Any]) -> JobStats:
    """``JobStats`` from the jobs table: a GROUP BY for the counts and (status, started_at,
    finished_at) of the terminal jobs for the histogram. Durations are computed here rather
    than in SQL because interval arithmetic differs between SQLite and PostgreSQL; the scan
    reads three narrow columns of the terminal jobs on each scrape."""
    import sqlalchemy as sa

    from service.db.models import Job

    with session_factory() as session:
        counts = session.execute(sa.select(Job.status, sa.func.count()).group_by(Job.status)).all()
        ran = session.execute(
            sa.select(Job.status, Job.started_at, Job.finished_at).where(
                Job.status.in_(TERMINAL_STATUSES),
                Job.started_at.is_not(None),
                Job.finished_at.is_not(None),
            )
        ).all()
    return JobStats(
        by_status={str(s): int(n) for s, n in counts},
        durations=[(str(s), max(0.0, _seconds_between(a, b))) for s, a, b in ran],
    )


def _seconds_between(start: dt.datetime, end: dt.datetime) -> float:
    """``end - start`` in seconds, treating naive datetimes (SQLite) as UTC."""
    if start.tzinfo is None:
        start = start.replace(tzinfo=dt.UTC)
    if end.tzinfo is None:
        end = end.replace(tzinfo=dt.UTC)
    return (end - start).total_seconds()


# ---------------------------------------------------------------------------------------------
# Middleware

# Any token is a valid HTTP method: label the unknown ones "other" so they add one series.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_access_log = logging.getLogger("service.access")


class ObservabilityMiddleware:
    """Pure ASGI middleware: gives each request an id (the client's ``X-Request-ID`` when it
    is a sane token, else a new one; echoed in the response), counts it in ``metrics`` by
    route template, and writes one access-log line (method, route, status, duration,
    job_id from the path) — never headers, so no Authorization value can leak."""

    def __init__(self, app: Any, metrics: ServiceMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        token = _request_id.set(request_id)
        status_holder = {"status": 500}
        start = time.perf_counter()

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            route = _route_template(scope)
            status = status_holder["status"]
            method = scope["method"] if scope["method"] in _KNOWN_METHODS else "other"
            self.metrics.observe_request(method, route, status, seconds)
            job_id = (scope.get("path_params") or {}).get("job_id")
            _access_log.info(
                "%s %s %d", scope["method"], route, status,
                extra={"method": scope["method"], "route": route, "status": status,
                       "duration_ms": round(seconds * 1000, 3),
                       **({"job_id": job_id} if job_id else {})},
            )
            _request_id.reset(token)


def _incoming_request_id(scope: dict) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _REQUEST_ID_OK.match(text) else None
    return None


def _route_template(scope: dict) -> str:
    """The matched route's path template; ``unmatched`` for 404s so that scanning random
    URLs cannot create unbounded metric series."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else "unmatched"


# ---------------------------------------------------------------------------------------------
# Wiring


def install_observability(app: Any, session_factory: Callable[[], Any] | None) -> ServiceMetrics:
    """Add request ids, the access log and metrics to a FastAPI ``app``, and serve
    ``GET /metrics`` (unauthenticated, like ``/healthz``). ``session_factory`` opens database
    sessions for the job series; None leaves them out. Returns the app's ``ServiceMetrics``
    (also at ``app.state.metrics``)."""
    from fastapi.responses import Response

    read_stats = (lambda: read_job_stats_from_db(session_factory)) if session_factory else None
    metrics = ServiceMetrics(read_stats)
    app.state.metrics = metrics
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)

    # No return annotation: with postponed annotations FastAPI could not resolve this local
    # ``Response`` name and would try to build a response model from it.
    def prometheus_metrics():
        """Prometheus metrics in text exposition format (no authentication, no secrets)."""
        return Response(content=metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route(
        "/metrics", prometheus_metrics, methods=["GET"], tags=["health"],
        summary="Prometheus metrics", response_class=Response, response_model=None,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                         "description": "Metrics in Prometheus text format"}},
    )
    return metrics


def worker_answers_ping(timeout_s: float = 5.0) -> bool:
    """True when the Celery worker running on this host answers a ping over the broker
    (the worker container's healthcheck: ``python -m service.observability worker-ping``).
    The broadcast collects replies for the whole ``timeout_s``, so it takes that long."""
    import socket

    from service.runners.celery import celery_app_for  # no task code: no import circle
    from service.settings import get_settings

    replies = celery_app_for(get_settings()).control.ping(timeout=timeout_s)
    host = socket.gethostname()
    return any(host in node for reply in replies for node in reply)


if __name__ == "__main__":
    if sys.argv[1:] != ["worker-ping"]:
        sys.exit("usage: python -m service.observability worker-ping")
    sys.exit(0 if worker_answers_ping() else 1)
