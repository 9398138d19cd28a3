"""The async client does the same basic flow as the sync one against the real server."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from service.client import AsyncGifClient, JobProgress, NotFoundError, ValidationError
from tests.client.conftest import MODEL_SPEC, FinishedJob
from tests.live_server import LiveServer


def test_async_upload_list_submit_wait_stream_download(server: LiveServer, checkpoint: Path,
                                                       finished_job: FinishedJob, tmp_path: Path):
    """The basic flow with ``await``; the submission reuses the shared job's idempotency key
    (so it is that job, already run once for the session)."""

    async def flow():
        async with AsyncGifClient(server.url, server.api_key, timeout=60.0) as gif:
            model = await gif.upload_model(checkpoint, {**MODEL_SPEC, "name": "async"})
            listed = [m.id for m in await gif.list_models(page_size=2)]
            job = await gif.submit_job(finished_job.body, idempotency_key=finished_job.key)
            seen: list[JobProgress] = []
            done = await gif.wait_for_job(job.id, on_progress=seen.append, timeout=60)
            events = [event async for event in gif.stream_events(job.id)]
            edited_id = done.result.edited_model_id
            path = await gif.download_model(edited_id, tmp_path / "edited.safetensors")
            edited = await gif.get_model(edited_id)
            with pytest.raises(NotFoundError):
                await gif.get_dataset("ds_doesnotexist")
            with pytest.raises(ValidationError):
                await gif.submit_job({**finished_job.body, "method": "newton"})
            return model, listed, done, seen, events, path, edited

    model, listed, done, seen, events, path, edited = asyncio.run(flow())

    assert model.id in listed and model.name == "async"
    assert done.id == finished_job.job.id and done.status == "succeeded"
    assert seen == ([done.progress] if done.progress else [])
    assert [e.seq for e in events] == [e.seq for e in finished_job.streamed]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == edited.sha256
    assert edited.source_job_id == done.id
