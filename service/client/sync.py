"""The blocking client, :class:`GifClient`: it drives the shared call descriptions
(``calls.py``) and operations (``operations.py``) with blocking IO."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
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
from service.client.sse import _EventStreamReader, _is_event_stream, iter_job_events
from service.client.transport import _ClientBase, _open_upload

T = TypeVar("T")


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
        """Upload a checkpoint with its spec (docs/api.md ``POST /v1/models``)."""
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
        """Submit an edit job (the body of docs/api.md). A fresh ``Idempotency-Key`` is
        generated unless one is given, so a retried submission never creates a second job."""
        return self._execute(_Calls.submit_job(body, idempotency_key or str(uuid.uuid4())))

    def get_job(self, job_id: str) -> Job:
        return self._execute(_Calls.get_job(job_id))

    def list_jobs(self, status: str | None = None, *, model_id: str | None = None,
                  method: str | None = None, metadata: Mapping[str, str] | None = None,
                  page_size: int | None = None) -> list[Job]:
        """All jobs (optionally of one ``status``, model or method, and whose metadata holds
        every ``key: value`` of ``metadata``), newest first, over every page."""
        filters = {"model_id": model_id, "method": method}
        return self._run(_paginate(lambda after: _Calls.list_jobs(status, page_size, after,
                                                                  filters, metadata)))

    def wait_for_job(self, job_id: str, on_progress: Callable[[JobProgress], Any] | None = None,
                     poll_interval: float = 0.5, timeout: float | None = None) -> Job:
        """Block until the job is terminal and return it; ``on_progress`` gets each new
        progress value. Raises :class:`WaitTimeoutError` after ``timeout`` seconds."""
        return self._run(_wait_for_job(job_id, on_progress, poll_interval, timeout))

    def cancel_job(self, job_id: str) -> Job:
        return self._execute(_Calls.cancel_job(job_id))

    def delete_job(self, job_id: str) -> None:
        """Erase a terminal job (its request, result, events; the edited model stays)."""
        return self._execute(_Calls.delete_job(job_id))

    def list_erasures(self, *, page_size: int | None = None) -> list[Erasure]:
        """All erasure records, newest first, over every page."""
        return self._run(_paginate(lambda after: _Calls.list_erasures(page_size, after)))

    def get_metrics(self, job_id: str) -> JobMetrics:
        return self._execute(_Calls.get_metrics(job_id))

    def list_webhook_deliveries(self, job_id: str) -> list[WebhookDelivery]:
        """The job's webhook deliveries, oldest first, each with its attempts."""
        return self._execute(_Calls.list_webhook_deliveries(job_id))

    def get_webhook_secret(self) -> str:
        """Your webhook signing secret (``whsec_…``), to verify deliveries with."""
        return self._execute(_Calls.get_webhook_secret()).secret

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
                    yield from iter_job_events(resp, reader)
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


