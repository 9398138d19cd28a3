"""A real webhook receiver for tests: an HTTP server on 127.0.0.1 that records every POST
and answers with scripted statuses, and a Standard Webhooks signature check written from the
specification's text alone (independent of the service's signing library)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks.webhooks import Webhook as ReferenceVerifier


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    answered: int
    at: float


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST and answers with the next status
    of ``script`` (then ``default``)."""

    script: list[int] = field(default_factory=list)
    default: int = 200
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def answer(self) -> int:
        with self.lock:
            return self.script.pop(0) if self.script else self.default

    def for_job(self, job_id: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if json.loads(r.body)["data"]["id"] == job_id]


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            body = self.rfile.read(int(self.headers["content-length"]))
            status = state.answer()
            with state.lock:
                state.received.append(Received(dict(self.headers), body, status, time.time()))
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    state.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=state.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.server.shutdown()
        state.server.server_close()


def independent_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """Standard Webhooks v1, from the specification's text alone."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def assert_signed(delivery: Received, secret: str) -> dict:
    """``delivery`` is signed with ``secret`` by the independent HMAC above and by the
    reference library's ``verify`` (which refuses a changed body); returns the payload."""
    headers = {k.lower(): v for k, v in delivery.headers.items()}
    msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    assert msg_id.startswith("msg_") and abs(int(timestamp) - time.time()) < 120
    expected = independent_signature(secret, msg_id, timestamp, delivery.body)
    assert expected in headers["webhook-signature"].split(" ")
    payload = ReferenceVerifier(secret).verify(delivery.body, headers)
    with pytest.raises(Exception, match="signature"):
        ReferenceVerifier(secret).verify(delivery.body + b" ", headers)
    assert headers["content-type"] == "application/json"
    return payload


