"""The SSE wire-format decoder (pure; the live stream is tested in test_client.py)."""

from __future__ import annotations

import json

from service.client import _EventStreamReader, _SSEDecoder


def feed_all(decoder: _SSEDecoder, text: str) -> list[tuple[str, str]]:
    messages = [decoder.feed(line) for line in text.split("\n")]
    return [m for m in messages if m is not None]


def test_decoder_joins_data_lines_skips_comments_and_keeps_the_last_id():
    text = ": keep-alive\n\nevent: progress\nid: 7\ndata: {\"a\":\ndata:  1}\n\ndata:x\n\n"

    messages = feed_all(_SSEDecoder(), text)

    assert messages == [("progress", '{"a":\n 1}'), ("message", "x")]


def test_reader_drops_events_already_seen_and_non_event_messages():
    reader = _EventStreamReader()
    lines = []
    for seq in (0, 1, 1, 2):
        lines += [f"data: {json.dumps({'seq': seq, 'message': f'm{seq}'})}", ""]
    lines += ["event: end", 'data: {"status": "succeeded"}', ""]

    events = [e for e in map(reader.feed, lines) if e is not None]

    assert [e.seq for e in events] == [0, 1, 2]
    assert reader.last_seq == 2
