"""Call descriptions: every endpoint of docs/api.md as a :class:`_Call` (what to send and how to
read the answer) without doing any IO, shared by the sync and async clients."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel

from service.client.errors import GifClientError
from service.client.models import (
    Architecture,
    Dataset,
    Erasure,
    Job,
    JobEvent,
    JobMetrics,
    Model,
    WebhookDelivery,
    WebhookSecret,
)

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
    next_cursor: str | None = None  # the server's cursor for the next page, when it sends one


def _parse_page(model: type[BaseModel]) -> Callable[[httpx.Response], _Page[Any]]:
    def parse(response: httpx.Response) -> _Page[Any]:
        body = response.json()
        items = body["data"] if isinstance(body, dict) else body
        has_more = bool(body.get("has_more")) if isinstance(body, dict) else False
        cursor = body.get("next_cursor") if isinstance(body, dict) else None
        return _Page([model.model_validate(item) for item in items], has_more,
                     cursor if isinstance(cursor, str) and cursor else None)

    return parse


def _parse_list(model: type[BaseModel]) -> Callable[[httpx.Response], list[Any]]:
    return lambda response: _parse_page(model)(response).items


def _json_body(value: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    return dict(value)


class _Calls:
    """Every endpoint of docs/api.md as a :class:`_Call` (shared by both clients)."""

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
    def list_jobs(status: str | None, limit: int | None, after: str | None,
                  filters: Mapping[str, str | None] | None = None,
                  metadata: Mapping[str, str] | None = None) -> _Call[_Page[Job]]:
        """``filters``: docs/api.md's list filters (``model_id``, ``method``); None values are not
        sent. ``metadata``: jobs whose metadata holds every ``key: value`` given
        (``metadata[key]=value``)."""
        params = _page_params(limit, after)
        extra = {"status": status, **(filters or {})}
        params.update({name: value for name, value in extra.items() if value is not None})
        params.update({f"metadata[{key}]": value for key, value in (metadata or {}).items()})
        return _Call("GET", "/v1/jobs", _parse_page(Job), params=params)

    @staticmethod
    def cancel_job(job_id: str) -> _Call[Job]:
        # Cancelling is idempotent on the server (docs/api.md), so retrying it is safe.
        return _Call("POST", f"/v1/jobs/{_segment(job_id)}/cancel", _parse_json(Job))

    @staticmethod
    def delete_job(job_id: str) -> _Call[None]:
        return _Call("DELETE", f"/v1/jobs/{_segment(job_id)}", _parse_nothing)

    @staticmethod
    def list_erasures(limit: int | None, after: str | None) -> _Call[_Page[Erasure]]:
        return _Call("GET", "/v1/erasures", _parse_page(Erasure),
                     params=_page_params(limit, after))

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

    @staticmethod
    def list_webhook_deliveries(job_id: str) -> _Call[list[WebhookDelivery]]:
        return _Call("GET", f"/v1/jobs/{_segment(job_id)}/webhooks",
                     _parse_list(WebhookDelivery))

    @staticmethod
    def get_webhook_secret() -> _Call[WebhookSecret]:
        return _Call("GET", "/v1/webhooks/secret", _parse_json(WebhookSecret))


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


