"""What the client raises: :class:`GifClientError` and, for a problem response (RFC 9457,
docs/api.md Conventions), a :class:`GifAPIError` subclass chosen by status."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from service.client.models import Job



class GifClientError(Exception):
    """Base class of everything this client raises."""


class GifConnectionError(GifClientError):
    """The server could not be reached (after the retries an idempotent call is allowed)."""


class IntegrityError(GifClientError):
    """A download's sha256 did not match the expected one; nothing was written."""


class WaitTimeoutError(GifClientError, TimeoutError):
    """``wait_for_job`` gave up before the job reached a terminal state."""

    def __init__(self, message: str, job: Job):
        super().__init__(message)
        self.job = job


class GifAPIError(GifClientError):
    """An error response; the fields are the RFC 9457 problem body's (docs/api.md, Conventions)."""

    def __init__(self, status: int, body: Mapping[str, Any], *, headers: Mapping[str, str] = {}):
        self.status = status
        self.body = dict(body)
        self.type = str(body.get("type") or "about:blank")
        self.title = str(body.get("title") or httpx.codes.get_reason_phrase(status) or "Error")
        self.detail = body.get("detail")
        self.errors: list[dict[str, Any]] = list(body.get("errors") or [])
        self.headers = dict(headers)
        super().__init__(self._message())

    def _message(self) -> str:
        text = f"{self.status} {self.title}"
        if self.detail:
            text += f": {self.detail}"
        for err in self.errors:
            loc = ".".join(str(part) for part in err.get("loc", []))
            text += f"\n  {loc or '(body)'}: {err.get('msg', '')}"
        return text


class BadRequestError(GifAPIError):
    """400."""


class AuthenticationError(GifAPIError):
    """401: a missing or wrong API key."""


class PermissionDeniedError(GifAPIError):
    """403."""


class NotFoundError(GifAPIError):
    """404: no such resource (or it belongs to another owner)."""


class ConflictError(GifAPIError):
    """409."""


class PayloadTooLargeError(GifAPIError):
    """413: an upload past the server's size cap."""


class ValidationError(GifAPIError):
    """422: the request names something that cannot be; ``errors`` lists each ``{loc, msg}``."""


class RateLimitError(GifAPIError):
    """429."""


class ServerError(GifAPIError):
    """5xx: the server's fault."""


class ServiceUnavailableError(ServerError):
    """503: not ready (retried for idempotent calls before this is raised)."""


_ERROR_BY_STATUS: dict[int, type[GifAPIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: ValidationError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def api_error(response: httpx.Response) -> GifAPIError:
    """The exception for an error response, built from its problem body (or its plain text)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = response.text.strip()[:500]
        body = {"status": response.status_code, "detail": text or None}
    status = response.status_code
    cls = _ERROR_BY_STATUS.get(status) or (ServerError if status >= 500 else GifAPIError)
    return cls(status, body, headers=response.headers)


