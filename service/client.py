"""Python client of the gif-service HTTP API (``docs/api.md``).

Two clients with the same methods: :class:`GifClient` (blocking) and :class:`AsyncGifClient`
(``async``/``await``). Neither holds any per-method logic of its own: every call is described
once, without doing any IO, by :class:`_Calls` (what to send and how to read the answer) or by a
small generator "operation" (multi-step flows such as waiting for a job), and each client only
*drives* those descriptions with its own transport. So the two cannot drift apart.

Configuration (first found wins): the ``url`` / ``api_key`` arguments, the ``GIF_URL`` /
``GIF_API_KEY`` environment variables, then the key file the embedded server writes
(``$GIF_DATA_DIR/api_key``, default ``./data/api_key``) and ``http://127.0.0.1:8000``.

Errors: a problem response (RFC 9457) raises a :class:`GifAPIError` subclass chosen by status
(:class:`NotFoundError`, :class:`ValidationError`, ...). Idempotent calls are retried with
exponential backoff on connection errors and 502/503/504; uploads and other non-idempotent
calls never are (a job submission carries an ``Idempotency-Key``, so it counts as idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import mimetypes
import os
import random
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Generic, Literal, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DEFAULT_URL",
    "Architecture",
    "ArchitectureArgument",
    "AsyncGifClient",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "Dataset",
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
    "Model",
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

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
RETRY_STATUSES = frozenset({502, 503, 504})

# --------------------------------------------------------------------------------------------
# Configuration


def resolve_url(url: str | None = None) -> str:
    """The base URL: the argument, else ``$GIF_URL``, else the embedded default's address."""
    return (url or os.environ.get("GIF_URL") or DEFAULT_URL).rstrip("/")


def default_key_file() -> Path:
    """Where the embedded server writes its generated key: ``$GIF_DATA_DIR/api_key``."""
    return Path(os.environ.get("GIF_DATA_DIR") or "./data") / "api_key"


def resolve_api_key(api_key: str | None = None) -> str:
    """The API key: the argument, else ``$GIF_API_KEY``, else the embedded server's key file."""
    if api_key:
        return api_key
    if os.environ.get("GIF_API_KEY"):
        return os.environ["GIF_API_KEY"]
    key_file = default_key_file()
    with contextlib.suppress(OSError):
        key = key_file.read_text(encoding="utf-8").strip()
        if key:
            return key
    raise GifClientError(
        "no API key: pass api_key= (or --api-key), set GIF_API_KEY, or start the embedded "
        f"server, which writes one to {key_file} (GIF_DATA_DIR)"
    )


# --------------------------------------------------------------------------------------------
# Errors


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
    """An error response; the fields are the RFC 9457 problem body's (api.md, Conventions)."""

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


# --------------------------------------------------------------------------------------------
# Resources (api.md). Unknown fields are kept, so a newer server never breaks an older client.


class _Resource(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class ModelInput(_Resource):
    """Preprocessing the model was trained with: ``x * scale``, then per-channel mean/std."""

    scale: float = 1.0
    mean: list[float] | None = None
    std: list[float] | None = None


class Model(_Resource):
    id: str
    name: str | None = None
    arch: str
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    input: ModelInput = Field(default_factory=ModelInput)
    task: str = "classification"
    num_parameters: int | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    created_at: datetime | None = None
    source_job_id: str | None = None


class Dataset(_Resource):
    id: str
    name: str | None = None
    num_samples: int | None = None
    sample_shape: list[int] | None = None
    dtype: str | None = None
    num_classes: int | None = None
    class_counts: Any = None
    sha256: str | None = None
    size_bytes: int | None = None
    created_at: datetime | None = None
    builtin: bool = False


class ArchitectureArgument(_Resource):
    name: str
    type: str | None = None
    required: bool = False
    default: Any = None
    description: str | None = None


class Architecture(_Resource):
    name: str
    description: str | None = None
    arguments: list[ArchitectureArgument] = Field(default_factory=list)
    flat_input: bool | None = None


class JobProgress(_Resource):
    phase: str | None = None
    iteration: int | None = None
    max_iter: int | None = None
    residual: float | None = None


class JobError(_Resource):
    code: str
    message: str = ""


class JobMetrics(_Resource):
    """Metrics per named set (``forget``, ``retain``, eval sets) plus ``score``, before/after."""

    before: dict[str, Any] = Field(default_factory=dict)
    after: dict[str, Any] = Field(default_factory=dict)

    def set_names(self) -> list[str]:
        """The evaluated sets (entries that are per-set dicts; ``_``-names are summaries)."""
        names = dict.fromkeys([*self.before, *self.after])
        return [n for n in names if not n.startswith("_")
                and isinstance(self.before.get(n, self.after.get(n)), dict)]

    def score(self, stage: Literal["before", "after"]) -> float | None:
        """E9's score of one stage."""
        values = self.before if stage == "before" else self.after
        return values.get("score")


class JobResult(_Resource):
    edited_model_id: str | None = None
    scale: float | None = None
    selection: dict[str, Any] = Field(default_factory=dict)
    solver: dict[str, Any] = Field(default_factory=dict)
    metrics: JobMetrics = Field(default_factory=JobMetrics)
    timings: dict[str, float] = Field(default_factory=dict)


class Job(_Resource):
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    request: dict[str, Any] = Field(default_factory=dict)
    progress: JobProgress | None = None
    error: JobError | None = None
    result: JobResult | None = None
    model_id: str | None = None
    train_dataset_id: str | None = None
    edited_model_id: str | None = None
    cancel_requested: bool = False

    @property
    def is_terminal(self) -> bool:
        """Terminal states never change (api.md, Jobs)."""
        return self.status in TERMINAL_STATUSES


class JobEvent(_Resource):
    seq: int
    at: datetime | None = None
    level: str = "info"
    phase: str | None = None
    message: str = ""
    data: Any = None


# --------------------------------------------------------------------------------------------
# Call descriptions: what to send and how to read the answer, without doing any IO.

T = TypeVar("T")


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One HTTP exchange. ``parse`` turns the successful response into the method's result."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, Any] | None = None
    json: Any = None
    data: Mapping[str, str] | None = None
    upload: Path | None = None  # sent as the multipart ``file`` part
    headers: Mapping[str, str] = field(default_factory=dict)
    idempotent: bool = True


@dataclass(frozen=True)
class _Sleep:
    """An operation asks its driver to wait (``time.sleep`` or ``asyncio.sleep``)."""

    seconds: float


# An operation is a generator that yields calls (and gets their results back) or sleeps, and
# returns its own result; the sync and async clients drive the same generator.
_Operation = Generator["_Call[Any] | _Sleep", Any, T]


def _parse_json(model: type[BaseModel]) -> Callable[[httpx.Response], Any]:
    return lambda response: model.model_validate(response.json())


def _parse_nothing(response: httpx.Response) -> None:
    return None


@dataclass(frozen=True)
class _Page(Generic[T]):
    items: list[T]
    has_more: bool


def _parse_page(model: type[BaseModel]) -> Callable[[httpx.Response], _Page[Any]]:
    def parse(response: httpx.Response) -> _Page[Any]:
        body = response.json()
        items = body["data"] if isinstance(body, dict) else body
        has_more = bool(body.get("has_more")) if isinstance(body, dict) else False
        return _Page([model.model_validate(item) for item in items], has_more)

    return parse


def _parse_list(model: type[BaseModel]) -> Callable[[httpx.Response], list[Any]]:
    return lambda response: _parse_page(model)(response).items


def _json_body(value: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    return dict(value)


class _Calls:
    """Every endpoint of api.md as a :class:`_Call` (shared by both clients)."""

    @staticmethod
    def upload_model(path: Path, spec: Mapping[str, Any] | BaseModel) -> _Call[Model]:
        spec_json = json.dumps(_json_body(spec))
        return _Call("POST", "/v1/models", _parse_json(Model), data={"spec": spec_json},
                     upload=path, idempotent=False)

    @staticmethod
    def list_models(limit: int | None, after: str | None) -> _Call[_Page[Model]]:
        return _Call("GET", "/v1/models", _parse_page(Model), params=_page_params(limit, after))

    @staticmethod
    def get_model(model_id: str) -> _Call[Model]:
        return _Call("GET", f"/v1/models/{_segment(model_id)}", _parse_json(Model))

    @staticmethod
    def delete_model(model_id: str) -> _Call[None]:
        return _Call("DELETE", f"/v1/models/{_segment(model_id)}", _parse_nothing)

    @staticmethod
    def model_content_path(model_id: str) -> str:
        return f"/v1/models/{_segment(model_id)}/content"

    @staticmethod
    def upload_dataset(path: Path, name: str | None) -> _Call[Dataset]:
        data = {"name": name if name is not None else path.stem}
        return _Call("POST", "/v1/datasets", _parse_json(Dataset), data=data, upload=path,
                     idempotent=False)

    @staticmethod
    def list_datasets(limit: int | None, after: str | None) -> _Call[_Page[Dataset]]:
        return _Call("GET", "/v1/datasets", _parse_page(Dataset), params=_page_params(limit, after))

    @staticmethod
    def get_dataset(dataset_id: str) -> _Call[Dataset]:
        return _Call("GET", f"/v1/datasets/{_segment(dataset_id)}", _parse_json(Dataset))

    @staticmethod
    def list_architectures() -> _Call[list[Architecture]]:
        return _Call("GET", "/v1/architectures", _parse_list(Architecture))

    @staticmethod
    def submit_job(body: Mapping[str, Any] | BaseModel, idempotency_key: str) -> _Call[Job]:
        # With the key, a retried submission returns the first job: safe to retry.
        return _Call("POST", "/v1/jobs", _parse_json(Job), json=_json_body(body),
                     headers={"Idempotency-Key": idempotency_key}, idempotent=True)

    @staticmethod
    def get_job(job_id: str) -> _Call[Job]:
        return _Call("GET", f"/v1/jobs/{_segment(job_id)}", _parse_json(Job))

    @staticmethod
    def list_jobs(status: str | None, limit: int | None, after: str | None) -> _Call[_Page[Job]]:
        params = _page_params(limit, after)
        if status is not None:
            params["status"] = status
        return _Call("GET", "/v1/jobs", _parse_page(Job), params=params)

    @staticmethod
    def cancel_job(job_id: str) -> _Call[Job]:
        # Cancelling is idempotent on the server (api.md), so retrying it is safe.
        return _Call("POST", f"/v1/jobs/{_segment(job_id)}/cancel", _parse_json(Job))

    @staticmethod
    def list_events(job_id: str, after_seq: int | None = None) -> _Call[list[JobEvent]]:
        # ``after_seq`` only saves bandwidth: callers still drop any event already seen.
        params = {"after_seq": after_seq} if after_seq is not None and after_seq >= 0 else None
        return _Call("GET", _Calls.events_path(job_id), _parse_list(JobEvent), params=params,
                     headers={"Accept": "application/json"})

    @staticmethod
    def events_path(job_id: str) -> str:
        return f"/v1/jobs/{_segment(job_id)}/events"

    @staticmethod
    def get_metrics(job_id: str) -> _Call[JobMetrics]:
        return _Call("GET", f"/v1/jobs/{_segment(job_id)}/metrics", _parse_json(JobMetrics))


def _page_params(limit: int | None, after: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if limit is not None:
        params["limit"] = limit
    if after is not None:
        params["after"] = after
    return params


def _segment(resource_id: str) -> str:
    """An id as one escaped path segment: ids are opaque, so one can never change the path."""
    if not resource_id or resource_id in {".", ".."}:
        raise GifClientError(f"not a valid id: {resource_id!r}")
    return urllib.parse.quote(resource_id, safe=":")


# --------------------------------------------------------------------------------------------
# Operations: multi-step flows written once as generators.


def _paginate(page_call: Callable[[str | None], _Call[_Page[T]]]) -> _Operation[list[T]]:
    """Every item over all pages, following the cursor (``after`` = the last id seen)."""
    items: list[T] = []
    after: str | None = None
    while True:
        page: _Page[T] = yield page_call(after)
        items.extend(page.items)
        if not page.has_more or not page.items:
            return items
        after = page.items[-1].id  # type: ignore[attr-defined]


def _wait_for_job(
    job_id: str,
    on_progress: Callable[[JobProgress], Any] | None,
    poll_interval: float,
    timeout: float | None,
    clock: Callable[[], float] = time.monotonic,
) -> _Operation[Job]:
    """Poll the job until it is terminal; report each new progress value to ``on_progress``."""
    deadline = None if timeout is None else clock() + timeout
    last_progress: JobProgress | None = None
    while True:
        job: Job = yield _Calls.get_job(job_id)
        if on_progress is not None and job.progress is not None and job.progress != last_progress:
            last_progress = job.progress
            on_progress(job.progress)
        if job.is_terminal:
            return job
        if deadline is not None and clock() >= deadline:
            raise WaitTimeoutError(
                f"job {job_id} is still {job.status} after {timeout:g} s", job=job
            )
        pause = poll_interval if deadline is None else min(poll_interval, deadline - clock())
        yield _Sleep(max(pause, 0.0))


def _poll_new_events(job_id: str, after_seq: int) -> _Operation[tuple[list[JobEvent], bool]]:
    """Events past ``after_seq`` and whether the job had ended before they were read."""
    job: Job = yield _Calls.get_job(job_id)
    events: list[JobEvent] = yield _Calls.list_events(job_id, after_seq)
    return [event for event in events if event.seq > after_seq], job.is_terminal


# --------------------------------------------------------------------------------------------
# Server-sent events (the ``text/event-stream`` form of GET /v1/jobs/{id}/events)


class _SSEDecoder:
    """Line-by-line decoder of the SSE wire format (WHATWG HTML, "event stream")."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self.last_id: str | None = None

    def feed(self, line: str) -> tuple[str, str] | None:
        """Take one line (without its newline); return ``(event, data)`` when one completes."""
        if line == "":
            if not self._data:
                self._event = ""
                return None
            message = (self._event or "message", "\n".join(self._data))
            self._event, self._data = "", []
            return message
        if line.startswith(":"):
            return None  # a comment: keep-alive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self.last_id = value
        return None


class _EventStreamReader:
    """Turns SSE lines into job events, dropping any already seen (by ``seq``)."""

    def __init__(self) -> None:
        self._decoder = _SSEDecoder()
        self.last_seq = -1

    def feed(self, line: str) -> JobEvent | None:
        message = self._decoder.feed(line)
        event = _event_from_sse(*message) if message else None
        return self.accept(event)

    def accept(self, event: JobEvent | None) -> JobEvent | None:
        if event is None or event.seq <= self.last_seq:
            return None
        self.last_seq = event.seq
        return event


def _event_from_sse(event: str, data: str) -> JobEvent | None:
    """A job event from one SSE message; other messages (e.g. an end marker) give ``None``."""
    try:
        payload = json.loads(data)
    except ValueError:
        return None
    if isinstance(payload, dict) and "seq" in payload:
        return JobEvent.model_validate(payload)
    return None


def _is_event_stream(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").startswith("text/event-stream")


# --------------------------------------------------------------------------------------------
# Downloads


def _etag_digest(response: httpx.Response) -> str | None:
    etag = response.headers.get("etag")
    if not etag:
        return None
    return etag.removeprefix("W/").strip('"').lower()


class _Download:
    """A download into a temporary file next to ``dest`` that becomes ``dest`` only if its
    sha256 matches; after a broken connection it resumes with ``Range`` (api.md, Downloads)."""

    def __init__(self, dest: Path, expected_sha256: str | None):
        self.dest = dest
        self.expected = expected_sha256.lower() if expected_sha256 else None
        self._etag: str | None = None
        # Not mkstemp: its 0600 mode would stick to the renamed file; "x" still never clobbers.
        self._path = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.part"
        self._file: IO[bytes] = open(self._path, "xb")  # noqa: SIM115 - closed by commit/discard
        self._hash = hashlib.sha256()
        self._received = 0

    def request_headers(self) -> dict[str, str]:
        headers = {"Accept": "application/octet-stream"}
        if self._received and self._etag:
            headers["Range"] = f"bytes={self._received}-"
            headers["If-Range"] = f'"{self._etag}"'
        return headers

    def begin(self, response: httpx.Response) -> None:
        """Start (or, on 206, continue) writing; a full 200 answer starts over."""
        if response.status_code != 206:
            self._file.seek(0)
            self._file.truncate()
            self._hash = hashlib.sha256()
            self._received = 0
        self._etag = _etag_digest(response) or self._etag

    def write(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self._file.write(chunk)
        self._received += len(chunk)

    def commit(self) -> Path:
        """Rename into place if every known expected digest matches, else delete and raise."""
        self._file.close()
        actual = self._hash.hexdigest()
        for digest in (self.expected, self._etag):
            if digest is not None and digest != actual:
                self.discard()
                raise IntegrityError(
                    f"sha256 mismatch for {self.dest.name}: expected {digest}, got {actual}; "
                    "nothing was written"
                )
        os.replace(self._path, self.dest)
        return self.dest

    def discard(self) -> None:
        self._file.close()
        self._path.unlink(missing_ok=True)


_DOWNLOAD = _Call("GET", "", _parse_nothing)  # how retries treat a download: an idempotent GET


def _download_target(dest: str | os.PathLike[str], model_id: str) -> Path:
    """``dest`` itself, or ``dest/<id>.safetensors`` when it is an existing directory."""
    path = Path(dest)
    return path / f"{model_id}.safetensors" if path.is_dir() else path


# --------------------------------------------------------------------------------------------
# Shared transport settings


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


# --------------------------------------------------------------------------------------------
# The blocking client


class GifClient(_ClientBase):
    """Blocking client. Use as a context manager (or call :meth:`close`)::

        with GifClient() as gif:
            model = gif.upload_model("model.safetensors", {"arch": "mlp", ...})
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ):
        super().__init__(url, api_key, timeout, max_retries)
        self._http = httpx.Client(transport=transport, **self._client_options())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GifClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- drivers ------------------------------------------------------------------------------

    def _execute(self, call: _Call[T]) -> T:
        attempt = 0
        while True:
            response = None
            try:
                with _open_upload(call) as upload:
                    response = self._http.send(self._build(self._http, call, upload))
            except httpx.TransportError as exc:
                if not self._should_retry(call, attempt, None):
                    raise self._connection_error(exc) from exc
            if response is not None and not self._should_retry(call, attempt, response):
                return self._result(call, response)
            time.sleep(self._retry.delay(attempt, response))
            attempt += 1

    def _run(self, operation: _Operation[T]) -> T:
        try:
            step = next(operation)
            while True:
                if isinstance(step, _Sleep):
                    time.sleep(step.seconds)
                    step = operation.send(None)
                else:
                    step = operation.send(self._execute(step))
        except StopIteration as done:
            return done.value

    # -- models -------------------------------------------------------------------------------

    def upload_model(self, path: str | os.PathLike[str],
                     spec: Mapping[str, Any] | BaseModel) -> Model:
        """Upload a checkpoint with its spec (api.md ``POST /v1/models``)."""
        return self._execute(_Calls.upload_model(Path(path), spec))

    def list_models(self, *, page_size: int | None = None) -> list[Model]:
        """All models, newest first, over every page."""
        return self._run(_paginate(lambda after: _Calls.list_models(page_size, after)))

    def get_model(self, model_id: str) -> Model:
        return self._execute(_Calls.get_model(model_id))

    def delete_model(self, model_id: str) -> None:
        return self._execute(_Calls.delete_model(model_id))

    def download_model(self, model_id: str, dest: str | os.PathLike[str], *,
                       expected_sha256: str | None = None) -> Path:
        """Stream the checkpoint to ``dest`` (a file, or a directory to put ``<id>.safetensors``
        in), verifying its sha256 against ``expected_sha256`` (default: the model's ``sha256``)
        and the response's ``ETag``. A mismatch raises :class:`IntegrityError` and leaves
        nothing behind."""
        expected = expected_sha256 or self.get_model(model_id).sha256
        download = _Download(_download_target(dest, model_id), expected)
        path = _Calls.model_content_path(model_id)
        attempt = 0
        try:
            while True:
                try:
                    with self._http.stream("GET", path,
                                           headers=download.request_headers()) as response:
                        if response.is_error:
                            response.read()
                            raise api_error(response)
                        download.begin(response)
                        for chunk in response.iter_bytes():
                            download.write(chunk)
                    return download.commit()
                except httpx.TransportError as exc:
                    if not self._should_retry(_DOWNLOAD, attempt, None):
                        raise self._connection_error(exc) from exc
                time.sleep(self._retry.delay(attempt, None))
                attempt += 1
        except BaseException:
            download.discard()
            raise

    # -- datasets and architectures -----------------------------------------------------------

    def upload_dataset(self, path: str | os.PathLike[str], name: str | None = None) -> Dataset:
        """Upload an ``.npz`` or safetensors dataset (default name: the file's stem)."""
        return self._execute(_Calls.upload_dataset(Path(path), name))

    def list_datasets(self, *, page_size: int | None = None) -> list[Dataset]:
        """All datasets (uploaded and built-in), over every page."""
        return self._run(_paginate(lambda after: _Calls.list_datasets(page_size, after)))

    def get_dataset(self, dataset_id: str) -> Dataset:
        return self._execute(_Calls.get_dataset(dataset_id))

    def list_architectures(self) -> list[Architecture]:
        return self._execute(_Calls.list_architectures())

    # -- jobs ---------------------------------------------------------------------------------

    def submit_job(self, body: Mapping[str, Any] | BaseModel,
                   idempotency_key: str | None = None) -> Job:
        """Submit an edit job (api.md body). A fresh ``Idempotency-Key`` is generated unless one
        is given, so a retried submission never creates a second job."""
        return self._execute(_Calls.submit_job(body, idempotency_key or str(uuid.uuid4())))

    def get_job(self, job_id: str) -> Job:
        return self._execute(_Calls.get_job(job_id))

    def list_jobs(self, status: str | None = None, *, page_size: int | None = None) -> list[Job]:
        """All jobs (optionally of one ``status``), newest first, over every page."""
        return self._run(_paginate(lambda after: _Calls.list_jobs(status, page_size, after)))

    def wait_for_job(self, job_id: str, on_progress: Callable[[JobProgress], Any] | None = None,
                     poll_interval: float = 0.5, timeout: float | None = None) -> Job:
        """Block until the job is terminal and return it; ``on_progress`` gets each new
        progress value. Raises :class:`WaitTimeoutError` after ``timeout`` seconds."""
        return self._run(_wait_for_job(job_id, on_progress, poll_interval, timeout))

    def cancel_job(self, job_id: str) -> Job:
        return self._execute(_Calls.cancel_job(job_id))

    def get_metrics(self, job_id: str) -> JobMetrics:
        return self._execute(_Calls.get_metrics(job_id))

    def list_events(self, job_id: str) -> list[JobEvent]:
        """The job's events so far (the JSON form of the events endpoint)."""
        return self._execute(_Calls.list_events(job_id))

    def stream_events(self, job_id: str, *, poll_interval: float = 0.5) -> Iterator[JobEvent]:
        """The job's events as they happen, ending when the job ends. Uses the SSE stream; if
        the server answers with JSON instead, or the stream breaks, it polls from the last
        event seen, so no event is lost or repeated."""
        reader = _EventStreamReader()
        try:
            with self._http.stream("GET", _Calls.events_path(job_id),
                                   headers={"Accept": "text/event-stream"},
                                   timeout=httpx.Timeout(self._timeout.connect, read=None)) as resp:
                if resp.is_error:
                    resp.read()
                    raise api_error(resp)
                if _is_event_stream(resp):
                    for line in resp.iter_lines():
                        if (event := reader.feed(line)) is not None:
                            yield event
        except httpx.TransportError:
            pass  # the stream broke: polling below picks up after the last event
        while True:
            events, ended = self._run(_poll_new_events(job_id, reader.last_seq))
            for event in events:
                if reader.accept(event) is not None:
                    yield event
            if ended:
                return
            time.sleep(poll_interval)


# --------------------------------------------------------------------------------------------
# The async client: the same calls and operations, driven with ``await``.


class AsyncGifClient(_ClientBase):
    """``async`` twin of :class:`GifClient`; use ``async with AsyncGifClient() as gif:``."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        super().__init__(url, api_key, timeout, max_retries)
        self._http = httpx.AsyncClient(transport=transport, **self._client_options())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncGifClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- drivers ------------------------------------------------------------------------------

    async def _execute(self, call: _Call[T]) -> T:
        attempt = 0
        while True:
            response = None
            try:
                with _open_upload(call) as upload:
                    response = await self._http.send(self._build(self._http, call, upload))
            except httpx.TransportError as exc:
                if not self._should_retry(call, attempt, None):
                    raise self._connection_error(exc) from exc
            if response is not None and not self._should_retry(call, attempt, response):
                return self._result(call, response)
            await asyncio.sleep(self._retry.delay(attempt, response))
            attempt += 1

    async def _run(self, operation: _Operation[T]) -> T:
        try:
            step = next(operation)
            while True:
                if isinstance(step, _Sleep):
                    await asyncio.sleep(step.seconds)
                    step = operation.send(None)
                else:
                    step = operation.send(await self._execute(step))
        except StopIteration as done:
            return done.value

    # -- models -------------------------------------------------------------------------------

    async def upload_model(self, path: str | os.PathLike[str],
                           spec: Mapping[str, Any] | BaseModel) -> Model:
        return await self._execute(_Calls.upload_model(Path(path), spec))

    async def list_models(self, *, page_size: int | None = None) -> list[Model]:
        return await self._run(_paginate(lambda after: _Calls.list_models(page_size, after)))

    async def get_model(self, model_id: str) -> Model:
        return await self._execute(_Calls.get_model(model_id))

    async def delete_model(self, model_id: str) -> None:
        return await self._execute(_Calls.delete_model(model_id))

    async def download_model(self, model_id: str, dest: str | os.PathLike[str], *,
                             expected_sha256: str | None = None) -> Path:
        """See :meth:`GifClient.download_model`."""
        expected = expected_sha256 or (await self.get_model(model_id)).sha256
        download = _Download(_download_target(dest, model_id), expected)
        path = _Calls.model_content_path(model_id)
        attempt = 0
        try:
            while True:
                try:
                    async with self._http.stream("GET", path,
                                                 headers=download.request_headers()) as response:
                        if response.is_error:
                            await response.aread()
                            raise api_error(response)
                        download.begin(response)
                        async for chunk in response.aiter_bytes():
                            download.write(chunk)
                    return download.commit()
                except httpx.TransportError as exc:
                    if not self._should_retry(_DOWNLOAD, attempt, None):
                        raise self._connection_error(exc) from exc
                await asyncio.sleep(self._retry.delay(attempt, None))
                attempt += 1
        except BaseException:
            download.discard()
            raise

    # -- datasets and architectures -----------------------------------------------------------

    async def upload_dataset(self, path: str | os.PathLike[str],
                             name: str | None = None) -> Dataset:
        return await self._execute(_Calls.upload_dataset(Path(path), name))

    async def list_datasets(self, *, page_size: int | None = None) -> list[Dataset]:
        return await self._run(_paginate(lambda after: _Calls.list_datasets(page_size, after)))

    async def get_dataset(self, dataset_id: str) -> Dataset:
        return await self._execute(_Calls.get_dataset(dataset_id))

    async def list_architectures(self) -> list[Architecture]:
        return await self._execute(_Calls.list_architectures())

    # -- jobs ---------------------------------------------------------------------------------

    async def submit_job(self, body: Mapping[str, Any] | BaseModel,
                         idempotency_key: str | None = None) -> Job:
        return await self._execute(_Calls.submit_job(body, idempotency_key or str(uuid.uuid4())))

    async def get_job(self, job_id: str) -> Job:
        return await self._execute(_Calls.get_job(job_id))

    async def list_jobs(self, status: str | None = None, *,
                        page_size: int | None = None) -> list[Job]:
        return await self._run(
            _paginate(lambda after: _Calls.list_jobs(status, page_size, after))
        )

    async def wait_for_job(self, job_id: str,
                           on_progress: Callable[[JobProgress], Any] | None = None,
                           poll_interval: float = 0.5, timeout: float | None = None) -> Job:
        return await self._run(_wait_for_job(job_id, on_progress, poll_interval, timeout))

    async def cancel_job(self, job_id: str) -> Job:
        return await self._execute(_Calls.cancel_job(job_id))

    async def get_metrics(self, job_id: str) -> JobMetrics:
        return await self._execute(_Calls.get_metrics(job_id))

    async def list_events(self, job_id: str) -> list[JobEvent]:
        return await self._execute(_Calls.list_events(job_id))

    async def stream_events(self, job_id: str, *,
                            poll_interval: float = 0.5) -> AsyncIterator[JobEvent]:
        """See :meth:`GifClient.stream_events`."""
        reader = _EventStreamReader()
        try:
            async with self._http.stream("GET", _Calls.events_path(job_id),
                                         headers={"Accept": "text/event-stream"},
                                         timeout=httpx.Timeout(self._timeout.connect,
                                                               read=None)) as resp:
                if resp.is_error:
                    await resp.aread()
                    raise api_error(resp)
                if _is_event_stream(resp):
                    async for line in resp.aiter_lines():
                        if (event := reader.feed(line)) is not None:
                            yield event
        except httpx.TransportError:
            pass  # the stream broke: polling below picks up after the last event
        while True:
            events, ended = await self._run(_poll_new_events(job_id, reader.last_seq))
            for event in events:
                if reader.accept(event) is not None:
                    yield event
            if ended:
                return
            await asyncio.sleep(poll_interval)
