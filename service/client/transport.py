"""What both clients share: base URL and key, headers, timeouts, and the retry rule (idempotent
calls are retried with exponential backoff on connection errors and 502/503/504; uploads and
other non-idempotent calls never are)."""

from __future__ import annotations

import contextlib
import mimetypes
import random
from dataclasses import dataclass
from typing import IO, Any, TypeVar

import httpx

from service.client.calls import _Call
from service.client.config import resolve_api_key, resolve_url
from service.client.errors import GifClientError, GifConnectionError, api_error

T = TypeVar("T")
RETRY_STATUSES = frozenset({502, 503, 504})



@dataclass(frozen=True)
class _Retry:
    """Exponential backoff with jitter; ``Retry-After`` wins when the server sends one."""

    attempts: int = 4
    base_delay: float = 0.25
    max_delay: float = 8.0

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            with contextlib.suppress(TypeError, ValueError):
                return min(float(response.headers["retry-after"]), self.max_delay)
        backoff = min(self.base_delay * 2**attempt, self.max_delay)
        return backoff * (0.5 + random.random() / 2)


class _ClientBase:
    def __init__(
        self,
        url: str | None,
        api_key: str | None,
        timeout: float,
        max_retries: int,
    ):
        self.url = resolve_url(url)
        self._api_key = resolve_api_key(api_key)
        self._timeout = httpx.Timeout(timeout)
        self._retry = _Retry(attempts=max_retries + 1)

    def _client_options(self) -> dict[str, Any]:
        return {
            "base_url": self.url,
            "headers": {
                "Authorization": f"Bearer {self._api_key}",
                "Accept": "application/json",
                "User-Agent": "gif-service-client/0.1",
            },
            "timeout": self._timeout,
            "follow_redirects": False,
        }

    def _should_retry(self, call: _Call[Any], attempt: int,
                      response: httpx.Response | None) -> bool:
        if not call.idempotent or attempt + 1 >= self._retry.attempts:
            return False
        return response is None or response.status_code in RETRY_STATUSES

    @staticmethod
    def _build(client: httpx.Client | httpx.AsyncClient, call: _Call[Any],
               upload: IO[bytes] | None) -> httpx.Request:
        files = None
        if upload is not None and call.upload is not None:
            content_type = mimetypes.guess_type(call.upload.name)[0] or "application/octet-stream"
            files = {"file": (call.upload.name, upload, content_type)}
        return client.build_request(
            call.method, call.path, params=call.params, json=call.json, data=call.data,
            files=files, headers=dict(call.headers),
        )

    @staticmethod
    def _result(call: _Call[T], response: httpx.Response) -> T:
        if response.is_error:
            raise api_error(response)
        try:
            return call.parse(response)
        except (ValueError, KeyError, TypeError) as exc:  # pydantic's errors are ValueErrors
            raise GifClientError(
                f"{call.method} {call.path}: unexpected {response.status_code} response "
                f"({response.headers.get('content-type', 'no content type')}): {exc}"
            ) from exc

    def _connection_error(self, exc: Exception) -> GifConnectionError:
        return GifConnectionError(f"cannot reach {self.url}: {exc}")


def _open_upload(call: _Call[Any]) -> contextlib.AbstractContextManager[IO[bytes] | None]:
    if call.upload is None:
        return contextlib.nullcontext()
    return open(call.upload, "rb")  # noqa: SIM115 - the caller's ``with`` closes it


