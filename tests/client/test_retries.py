"""Retry, backoff and resume behaviour over real HTTP. The real service cannot be made to
answer 503 or to cut a download in half on demand, so these few tests inject those faults with
a tiny standard-library HTTP server (a real socket and real httpx, nothing patched)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from service.client import GifClient, GifClientError, IntegrityError, ServiceUnavailableError

MODEL_BYTES = bytes(range(256)) * 64
MODEL_SHA = hashlib.sha256(MODEL_BYTES).hexdigest()
MODEL_JSON = {"id": "mdl_x", "arch": "mlp", "sha256": MODEL_SHA}

Handler = Callable[[BaseHTTPRequestHandler, int], None]


@contextmanager
def faulty_server(handle: Handler) -> Iterator[tuple[str, list[str]]]:
    """Serve ``handle(request, n)`` (n = how many requests came before); yield the URL and the
    log of ``"METHOD path"`` lines received."""
    seen: list[str] = []

    class Faulty(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            seen.append(f"{self.command} {self.path} {self.headers.get('Range') or ''}".strip())
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            handle(self, len(seen) - 1)

        do_GET = do_POST = do_DELETE = _any

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Faulty)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def reply(request: BaseHTTPRequestHandler, status: int, body: bytes = b"",
          headers: dict[str, str] | None = None) -> None:
    request.send_response(status)
    for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
        request.send_header(name, value)
    request.end_headers()
    request.wfile.write(body)


def problem(request: BaseHTTPRequestHandler, status: int) -> None:
    body = json.dumps({"type": "about:blank", "title": "Unavailable", "status": status,
                       "detail": "starting up"}).encode()
    reply(request, status, body, {"Content-Type": "application/problem+json", "Retry-After": "0"})


def test_an_idempotent_read_is_retried_through_503s():
    def handle(request, n):
        if n < 2:
            return problem(request, 503)
        reply(request, 200, json.dumps(MODEL_JSON).encode(), {"Content-Type": "application/json"})

    with faulty_server(handle) as (url, seen), GifClient(url, "key") as gif:
        model = gif.get_model("mdl_x")

    assert model.sha256 == MODEL_SHA
    assert seen == ["GET /v1/models/mdl_x"] * 3


def test_retries_stop_after_max_retries_with_the_problem_raised():
    with faulty_server(lambda request, n: problem(request, 503)) as (url, seen), \
            GifClient(url, "key", max_retries=2) as gif, \
            pytest.raises(ServiceUnavailableError) as caught:
        gif.list_jobs()

    assert len(seen) == 3
    assert caught.value.detail == "starting up"


def test_an_upload_is_never_retried(tmp_path: Path):
    checkpoint = tmp_path / "m.safetensors"
    checkpoint.write_bytes(MODEL_BYTES)
    with faulty_server(lambda request, n: problem(request, 503)) as (url, seen), \
            GifClient(url, "key") as gif, pytest.raises(ServiceUnavailableError):
        gif.upload_model(checkpoint, {"arch": "mlp"})

    assert seen == ["POST /v1/models"]


def test_a_broken_download_resumes_with_range_and_is_verified(tmp_path: Path):
    half = len(MODEL_BYTES) // 2
    etag = {"ETag": f'"{MODEL_SHA}"'}

    def handle(request, n):
        if request.path == "/v1/models/mdl_x":
            return reply(request, 200, json.dumps(MODEL_JSON).encode())
        if not request.headers.get("Range"):
            # Promise everything, send half, drop the connection.
            request.send_response(200)
            request.send_header("Content-Length", str(len(MODEL_BYTES)))
            request.send_header("ETag", etag["ETag"])
            request.end_headers()
            request.wfile.write(MODEL_BYTES[:half])
            request.wfile.flush()
            request.close_connection = True
            return
        start = int(request.headers["Range"].removeprefix("bytes=").rstrip("-"))
        reply(request, 206, MODEL_BYTES[start:],
              {**etag, "Content-Range": f"bytes {start}-{len(MODEL_BYTES) - 1}/{len(MODEL_BYTES)}"})

    with faulty_server(handle) as (url, seen), GifClient(url, "key") as gif:
        path = gif.download_model("mdl_x", tmp_path / "m.safetensors")

    assert path.read_bytes() == MODEL_BYTES
    assert seen[-1] == f"GET /v1/models/mdl_x/content bytes={half}-"


def test_a_download_whose_bytes_do_not_match_the_etag_leaves_nothing(tmp_path: Path):
    def handle(request, n):
        if request.path == "/v1/models/mdl_x":
            return reply(request, 200, json.dumps({**MODEL_JSON, "sha256": None}).encode())
        reply(request, 200, MODEL_BYTES[:-1] + b"\x00", {"ETag": f'"{MODEL_SHA}"'})

    with faulty_server(handle) as (url, _), GifClient(url, "key") as gif, \
            pytest.raises(IntegrityError, match=MODEL_SHA):
        gif.download_model("mdl_x", tmp_path)

    assert list(tmp_path.iterdir()) == []


def event_json(seq: int) -> dict:
    return {"seq": seq, "at": "2026-01-01T00:00:00Z", "level": "info", "phase": "solve",
            "message": f"event {seq}", "data": None}


def test_a_broken_event_stream_continues_by_polling_without_repeats():
    """SSE delivers events 0 and 1, then the connection drops; the JSON list then holds 0..3
    and the job has ended: the client yields 0, 1, 2, 3 once each and stops."""

    def handle(request, n):
        if request.path == "/v1/jobs/job_x":
            job = {"id": "job_x", "status": "succeeded"}
            return reply(request, 200, json.dumps(job).encode())
        if "text/event-stream" in request.headers.get("Accept", ""):
            request.send_response(200)
            request.send_header("Content-Type", "text/event-stream")
            request.send_header("Content-Length", "100000")  # promises more than it sends
            request.end_headers()
            for seq in (0, 1):
                request.wfile.write(
                    f"event: job_event\nid: {seq}\ndata: {json.dumps(event_json(seq))}\n\n".encode()
                )
            request.wfile.flush()
            request.close_connection = True
            return
        body = json.dumps({"data": [event_json(seq) for seq in range(4)], "has_more": False})
        reply(request, 200, body.encode(), {"Content-Type": "application/json"})

    with faulty_server(handle) as (url, seen), GifClient(url, "key") as gif:
        events = list(gif.stream_events("job_x"))

    assert [event.seq for event in events] == [0, 1, 2, 3]
    assert seen[0] == "GET /v1/jobs/job_x/events"
    assert "GET /v1/jobs/job_x" in seen[1:]


def test_a_server_without_sse_is_polled_until_the_job_ends():
    """An events endpoint that answers JSON even to ``Accept: text/event-stream``."""
    states = iter(["running", "running", "succeeded"])

    def handle(request, n):
        if request.path == "/v1/jobs/job_x":
            job = {"id": "job_x", "status": next(states, "succeeded")}
            return reply(request, 200, json.dumps(job).encode())
        count = min(n, 6)  # more events appear as the job runs
        body = json.dumps([event_json(seq) for seq in range(count)])
        reply(request, 200, body.encode(), {"Content-Type": "application/json"})

    with faulty_server(handle) as (url, _), GifClient(url, "key") as gif:
        events = list(gif.stream_events("job_x", poll_interval=0.01))

    assert [event.seq for event in events] == [0, 1, 2, 3, 4, 5]


def test_a_success_that_is_not_the_api_json_is_a_clear_client_error():
    def handle(request, n):
        reply(request, 200, b"<html>proxy login</html>", {"Content-Type": "text/html"})

    with faulty_server(handle) as (url, _), GifClient(url, "key") as gif, \
            pytest.raises(GifClientError, match=r"mdl_x: unexpected 200 .*text/html"):
        gif.get_model("mdl_x")


def test_pagination_follows_the_servers_next_cursor_else_the_last_id():
    """A page's ``next_cursor`` (valid when the item it names is gone) wins over the last id;
    a server that sends none is paged by the last id."""
    pages = {
        "/v1/models?limit=1": {"data": [{**MODEL_JSON, "id": "mdl_a"}], "has_more": True,
                               "next_cursor": "cur_1"},
        "/v1/models?limit=1&after=cur_1": {"data": [{**MODEL_JSON, "id": "mdl_b"}],
                                           "has_more": True},
        "/v1/models?limit=1&after=mdl_b": {"data": [{**MODEL_JSON, "id": "mdl_c"}],
                                           "has_more": False},
    }

    def handle(request, n):
        body = pages.get(request.path)
        if body is None:
            return reply(request, 404, b"{}", {"Content-Type": "application/json"})
        reply(request, 200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    with faulty_server(handle) as (url, seen), GifClient(url, "key") as gif:
        models = gif.list_models(page_size=1)

    assert [m.id for m in models] == ["mdl_a", "mdl_b", "mdl_c"]
    assert seen == ["GET /v1/models?limit=1", "GET /v1/models?limit=1&after=cur_1",
                    "GET /v1/models?limit=1&after=mdl_b"]
