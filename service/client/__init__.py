"""Python client of the gif-service HTTP API (``docs/api.md``).

Two clients with the same methods: :class:`GifClient` (blocking) and :class:`AsyncGifClient`
(``async``/``await``). Neither holds any per-method logic of its own: every call is described
once, without doing any IO, in ``calls.py`` (what to send and how to read the answer) or as a
small generator in ``operations.py`` (multi-step flows such as waiting for a job), and each
client only *drives* those descriptions with its own transport. So the two cannot drift apart.

The package: ``config`` (where the service and key are found), ``errors``, ``models`` (the
resources), ``calls``, ``operations``, ``sse`` (the live event stream), ``downloads``,
``transport`` (headers, timeouts, retries), ``sync`` and ``aio`` (the two clients).

Configuration (first found wins): the ``url`` / ``api_key`` arguments, the ``GIF_URL`` /
``GIF_API_KEY`` environment variables, then the key file the embedded server writes
(``$GIF_DATA_DIR/api_key``, default ``./data/api_key``) and ``http://127.0.0.1:8000``.

Errors: a problem response (RFC 9457) raises a :class:`GifAPIError` subclass chosen by status
(:class:`NotFoundError`, :class:`ValidationError`, ...). Idempotent calls are retried with
exponential backoff on connection errors and 502/503/504; uploads and other non-idempotent
calls never are (a job submission carries an ``Idempotency-Key``, so it counts as idempotent).
"""

from service.client.aio import AsyncGifClient
from service.client.config import DEFAULT_URL, resolve_api_key, resolve_url
from service.client.errors import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    GifAPIError,
    GifClientError,
    GifConnectionError,
    IntegrityError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    ValidationError,
    WaitTimeoutError,
)
from service.client.models import (
    Architecture,
    ArchitectureArgument,
    Dataset,
    Erasure,
    Job,
    JobError,
    JobEvent,
    JobMetrics,
    JobProgress,
    JobResult,
    JobWarning,
    JobWebhook,
    Model,
    WebhookAttempt,
    WebhookDelivery,
)
from service.client.sync import GifClient

__all__ = [
    "DEFAULT_URL",
    "Architecture",
    "ArchitectureArgument",
    "AsyncGifClient",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "Dataset",
    "Erasure",
    "GifAPIError",
    "GifClient",
    "GifClientError",
    "GifConnectionError",
    "IntegrityError",
    "Job",
    "JobError",
    "JobEvent",
    "JobMetrics",
    "JobProgress",
    "JobResult",
    "JobWarning",
    "JobWebhook",
    "Model",
    "WebhookAttempt",
    "WebhookDelivery",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "ServiceUnavailableError",
    "ValidationError",
    "WaitTimeoutError",
    "resolve_api_key",
    "resolve_url",
]
