"""The live event stream, read over a real socket from a tiny uvicorn-served app that frames
events exactly as the SSE standard allows (only CR, LF and CRLF end a line). The real service's
stream is tested in test_client.py; this app exists so the client is held to the standard on its
own, whatever the server's framing does."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import uvicorn
from httpx_sse import ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from service.client import AsyncGifClient, GifClient
from service.client.sse import _EventStreamReader
from tests.live_server import free_port

# Characters str.splitlines() (and so httpx's iter_lines) treats as line ends, though SSE
# does not: pydantic and json.dumps(ensure_ascii=False) write them unescaped inside strings.
NOT_LINE_ENDS = {"U+2028": "\u2028", "U+2029": "\u2029", "U+0085": "\u0085",
                 "U+000B": "\x0b", "U+000C": "\x0c", "U+001C": "\x1c"}
# The three line ends the standard does allow, each used to frame some events.
LINE_ENDS = ("\n", "\r\n", "\r")


def job_events() -> list[dict]:
    events = [{"seq": seq, "level": "info", "phase": "solve", "data": {"name": name},
               "message": f"before {char} after {name}", "at": "2026-01-01T00:00:00Z"}
              for seq, (name, char) in enumerate(NOT_LINE_ENDS.items())]
    n = len(events)
    events.append({"seq": n, "level": "info", "phase": "save", "data": None,
                   "message": "a real line break\nand a carriage return\rand CRLF\r\n end"})
    events.append({"seq": n + 1, "level": "warning", "phase": "save", "data": {"k": "\u2028"},
                   "message": "all at once: \u2028\u2029\u0085\r\n"})
    return events


def sse_frame(index: int, event: dict) -> str:
    """One event, framed with the index's line end; every third event splits its JSON over
    two ``data:`` lines (joined with LF by the reader: JSON whitespace)."""
    end = LINE_ENDS[index % len(LINE_ENDS)]
    body = json.dumps(event, ensure_ascii=False)
    data_lines = [body]
    if index % 3 == 0:
        cut = body.index(",") + 1
        data_lines = [body[:cut], body[cut:]]
    lines = [f"id: {event['seq']}", "event: job_event", *(f"data: {d}" for d in data_lines)]
    return "".join(line + end for line in lines) + end


async def events_route(request: Request):
    if "text/event-stream" not in request.headers.get("accept", ""):
        # The client's catch-up poll after the stream ends: nothing here, so every event the
        # test counts came through the stream itself.
        return JSONResponse([])

    async def frames():
        yield ": keep-alive\r\n\r\n"
        for index, event in enumerate(job_events()):
            yield sse_frame(index, event)
        yield 'event: end\r\ndata: {"status": "succeeded"}\r\n\r\n'

    return StreamingResponse(frames(), media_type="text/event-stream")


async def job_route(request: Request):
    return JSONResponse({"id": request.path_params["job_id"], "status": "succeeded"})


@contextmanager
def sse_server() -> Iterator[str]:
    app = Starlette(routes=[Route("/v1/jobs/{job_id}/events", events_route),
                            Route("/v1/jobs/{job_id}", job_route)])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            threading.Event().wait(0.01)
        assert server.started, "the SSE test server did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def sse_url() -> Iterator[str]:
    with sse_server() as url:
        yield url


def expected_messages() -> list[tuple[int, str]]:
    return [(event["seq"], event["message"]) for event in job_events()]


def test_every_event_arrives_whole_whatever_its_strings_hold(sse_url: str):
    with GifClient(sse_url, "key", max_retries=0) as gif:
        events = list(gif.stream_events("job_x", poll_interval=0.01))

    assert [(e.seq, e.message) for e in events] == expected_messages()
    assert events[-1].data == {"k": "\u2028"}


def test_the_async_client_reads_the_same_stream(sse_url: str):
    async def read() -> list:
        async with AsyncGifClient(sse_url, "key", max_retries=0) as gif:
            return [event async for event in gif.stream_events("job_x", poll_interval=0.01)]

    events = asyncio.run(read())

    assert [(e.seq, e.message) for e in events] == expected_messages()


def test_reader_drops_events_already_seen_and_non_event_messages():
    reader = _EventStreamReader()
    messages = [ServerSentEvent("job_event", json.dumps({"seq": seq, "message": f"m{seq}"}))
                for seq in (0, 1, 1, 2)]
    messages.append(ServerSentEvent("end", '{"status": "succeeded"}'))

    events = [e for e in map(reader.feed, messages) if e is not None]

    assert [e.seq for e in events] == [0, 1, 2]
    assert reader.last_seq == 2
