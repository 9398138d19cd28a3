"""The async client, :class:`AsyncGifClient`: the same calls and operations as
:class:`~service.client.sync.GifClient`, driven with ``await``."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from service.client.calls import _Call, _Calls, _Operation, _Sleep
from service.client.downloads import _DOWNLOAD, _Download, _download_target
from service.client.errors import api_error
from service.client.models import (
    Architecture,
    Dataset,
    Erasure,
    Job,
    JobEvent,
    JobMetrics,
    JobProgress,
    Model,
    WebhookDelivery,
)
from service.client.operations import _paginate, _poll_new_events, _wait_for_job
from service.client.sse import _EventStreamReader, _is_event_stream, aiter_job_events
from service.client.transport import _ClientBase, _open_upload

T = TypeVar("T")


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

    async def list_jobs(self, status: str | None = None, *, model_id: str | None = None,
                        method: str | None = None, metadata: Mapping[str, str] | None = None,
                        page_size: int | None = None) -> list[Job]:
        filters = {"model_id": model_id, "method": method}
        return await self._run(
            _paginate(lambda after: _Calls.list_jobs(status, page_size, after, filters,
                                                     metadata))
        )

    async def wait_for_job(self, job_id: str,
                           on_progress: Callable[[JobProgress], Any] | None = None,
                           poll_interval: float = 0.5, timeout: float | None = None) -> Job:
        return await self._run(_wait_for_job(job_id, on_progress, poll_interval, timeout))

    async def cancel_job(self, job_id: str) -> Job:
        return await self._execute(_Calls.cancel_job(job_id))

    async def delete_job(self, job_id: str) -> None:
        return await self._execute(_Calls.delete_job(job_id))

    async def list_erasures(self, *, page_size: int | None = None) -> list[Erasure]:
        return await self._run(_paginate(lambda after: _Calls.list_erasures(page_size, after)))

    async def get_metrics(self, job_id: str) -> JobMetrics:
        return await self._execute(_Calls.get_metrics(job_id))

    async def list_webhook_deliveries(self, job_id: str) -> list[WebhookDelivery]:
        return await self._execute(_Calls.list_webhook_deliveries(job_id))

    async def get_webhook_secret(self) -> str:
        return (await self._execute(_Calls.get_webhook_secret())).secret

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
                    async for event in aiter_job_events(resp, reader):
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
