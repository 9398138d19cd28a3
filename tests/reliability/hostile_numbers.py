"""Schemathesis hooks that put numbers JSON cannot hold into generated requests: ``NaN``,
``±Infinity`` (what ``1e999`` parses to) and integers past 64 bits, in place of the numbers of
JSON bodies, as the ``spec`` form field's numbers, and as integer query parameters.

Schemathesis (hypothesis-jsonschema) only generates finite JSON numbers, so these are mapped
onto what it generates: each generated body keeps its shape, with some of its numbers (or one
added field) replaced by a hostile value drawn by hypothesis. Python's ``json.dumps`` writes
them as ``NaN``, ``Infinity`` and long digit strings, which is what a hostile client sends;
JSON bodies are handed to schemathesis already encoded (``requests`` refuses to encode them)."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import strategies as st

HOSTILE = [math.nan, math.inf, -math.inf, 2**63, -(2**63) - 1, 2**64, 10**30, -(10**400)]
QUERY_HOSTILE = ["NaN", "Infinity", "-Infinity", "1e999", str(2**63), str(2**64), "9" * 400]


def _jsonable(value: Any) -> Any:
    """What a negative case may nest that JSON has no type for (bytes of a binary format)."""
    return value.decode("latin-1") if isinstance(value, bytes | bytearray) else str(value)


def _replace(value: Any, draw_hostile, pick) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return draw_hostile() if pick() else value
    if isinstance(value, list):
        return [_replace(item, draw_hostile, pick) for item in value]
    if isinstance(value, dict):
        return {key: _replace(item, draw_hostile, pick) for key, item in value.items()}
    return value


@st.composite
def _hostile_body(draw, body: Any) -> Any:
    def hostile() -> Any:
        return draw(st.sampled_from(HOSTILE))

    def pick() -> bool:
        return draw(st.booleans())

    if isinstance(body, dict) and {"file", "spec"} <= set(body):
        spec = {"arch": "mlp", "arch_kwargs": {"in_features": hostile(), "hidden": [hostile()],
                                                "num_classes": 10},
                "input": {"scale": hostile(), "mean": [hostile()], "std": [1.0]}}
        return {**body, "spec": json.dumps(spec)}
    mutated = _replace(body, hostile, pick)
    if isinstance(mutated, dict) and draw(st.booleans()):
        mutated = {**mutated, draw(st.sampled_from(["seed", "x", "limit"])): hostile()}
    return json.dumps(mutated, default=_jsonable).encode()


def add_hostile_numbers(schema) -> list[tuple[str, int]]:
    """Register the hooks on one schemathesis schema; returns the list that collects
    ``(operation, status)`` of every request whose body carried a non-finite number."""
    carried: list[tuple[str, int]] = []

    @schema.hook("after_call")
    def record(context, case, response):
        body = case.body if isinstance(case.body, bytes) else json.dumps(case.body,
                                                                          default=_jsonable)
        text = body.decode("latin-1") if isinstance(body, bytes) else body
        if "NaN" in text or "Infinity" in text:
            carried.append((f"{case.method} {case.path}", response.status_code))

    @schema.hook("flatmap_body")
    def hostile_body(_context, body):
        return _hostile_body(body)

    @schema.hook("flatmap_query")
    def hostile_query(_context, query):
        if not query:
            return st.just(query)
        return st.fixed_dictionaries(
            {key: st.sampled_from(QUERY_HOSTILE) | st.just(value) for key, value in query.items()}
        )

    return carried
