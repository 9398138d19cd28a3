"""The live event stream delivers every event intact whatever its text holds: a real
``gif-service serve`` (uvicorn, runner ``none``), events written with the server's own event
writer into its database, read over HTTP by httpx-sse (a reader that, like the SSE standard,
ends lines only at CR, LF and CRLF). pydantic writes U+2028, U+2029 and U+0085 unescaped into
JSON; a server that framed with ``str.splitlines()`` cut such an event in two."""

from __future__ import annotations

import json
import threading

import httpx
from httpx_sse import connect_sse

from service.db.session import make_engine, make_session_factory
from service.jobs.events import append_event
from tests.live_server import live_server, service_env
from tests.reliability.helpers import submit, upload_dataset, upload_model
from tests.worker import digits

HOSTILE = ["line\u2028separator", "para\u2029graph", "next\u0085line", "carriage\rreturn",
           "new\nline", "crlf\r\npair", "all\u2028\u2029\u0085\r\n\r\nat once", "plain"]


def test_every_event_arrives_intact_whatever_characters_its_strings_hold(tmp_path,
                                                                          upload_files):
    env = service_env(tmp_path / "data", extra={"GIF_RUNNER": "none"})
    with live_server(tmp_path / "data", env=env) as server, server.client() as client:
        model = upload_model(client, upload_files.model)
        dataset = upload_dataset(client, upload_files.data)
        job = submit(client, model["id"], dataset["id"],
                     digits.quick_request({"kind": "remove_class", "class": 3}))
        engine = make_engine(f"sqlite:///{server.data_dir / 'gif.db'}")
        factory = make_session_factory(engine)
        received: list[tuple[str, str, str]] = []
        raw: list[bytes] = []

        def listen() -> None:
            with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as c, \
                    connect_sse(c, "GET", f"/v1/jobs/{job['id']}/events") as source:
                for message in source.iter_sse():
                    received.append((message.event, message.id, message.data))

        def listen_raw() -> None:
            with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as c, \
                    c.stream("GET", f"/v1/jobs/{job['id']}/events",
                             headers={"Accept": "text/event-stream"}) as response:
                raw.extend(response.iter_bytes())

        listeners = [threading.Thread(target=listen), threading.Thread(target=listen_raw)]
        for thread in listeners:
            thread.start()
        try:
            for text in HOSTILE:
                append_event(factory, job["id"], "info", "solve", text, {"text": text})
            client.post(f"/v1/jobs/{job['id']}/cancel").raise_for_status()  # ends the stream
            for thread in listeners:
                thread.join(60)
        finally:
            engine.dispose()

    events = [json.loads(data) for kind, _, data in received if kind == "job_event"]
    assert [e["message"] for e in events[: len(HOSTILE)]] == HOSTILE
    assert [e["data"] for e in events[: len(HOSTILE)]] == [{"text": t} for t in HOSTILE]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # none skipped
    assert [int(i) for kind, i, _ in received if kind == "job_event"] == [e["seq"] for e in events]
    assert received[-1][0] == "end" and json.loads(received[-1][2]) == {"status": "cancelled"}
    # The test is only as strong as its bytes: the stream did carry the raw characters.
    body = b"".join(raw).decode("utf-8")
    assert "\u2028" in body and "\u2029" in body and "\u0085" in body
