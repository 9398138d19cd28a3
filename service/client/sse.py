"""The live event stream (``text/event-stream`` form of ``GET /v1/jobs/{id}/events``).

The wire format is read by httpx-sse, which ends a line only at CR, LF or CRLF as the SSE
standard says (WHATWG HTML, "event stream"): a message whose JSON holds U+2028, U+2029 or
U+0085 unescaped (pydantic writes them so) arrives whole. ``str.splitlines`` — what httpx's
``iter_lines`` uses — splits there too, which broke such an event and lost it for good.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import httpx
from httpx_sse import EventSource, ServerSentEvent

from service.client.models import JobEvent


class _EventStreamReader:
    """Turns SSE messages into job events, dropping any already seen (by ``seq``)."""

    def __init__(self) -> None:
        self.last_seq = -1

    def feed(self, message: ServerSentEvent) -> JobEvent | None:
        return self.accept(_event_from_sse(message.data))

    def accept(self, event: JobEvent | None) -> JobEvent | None:
        if event is None or event.seq <= self.last_seq:
            return None
        self.last_seq = event.seq
        return event


def _event_from_sse(data: str) -> JobEvent | None:
    """A job event from one SSE message's data; other messages (the end marker) give None."""
    try:
        payload = json.loads(data)
    except ValueError:
        return None
    if isinstance(payload, dict) and "seq" in payload:
        return JobEvent.model_validate(payload)
    return None


def _is_event_stream(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").startswith("text/event-stream")


def iter_job_events(response: httpx.Response, reader: _EventStreamReader) -> Iterator[JobEvent]:
    """The new job events of an open SSE response."""
    for message in EventSource(response).iter_sse():
        if (event := reader.feed(message)) is not None:
            yield event


async def aiter_job_events(response: httpx.Response,
                           reader: _EventStreamReader) -> AsyncIterator[JobEvent]:
    """The new job events of an open SSE response (async)."""
    async for message in EventSource(response).aiter_sse():
        if (event := reader.feed(message)) is not None:
            yield event
