"""The client's resource models re-declare the server's response schemas by hand (the client
must not import the server). This test holds each one against the served ``/openapi.json`` of
``create_app``, so they cannot drift apart: the same field names, the same types, and no field
the client requires (or reads as never-null) that the server may leave out (or send as null).

The client is deliberately lenient in one way only: a field the server always sends may have a
default in the client (so a trimmed body, e.g. a list summary, still parses), and a free-form
object of the server's (``dict[str, Any]``, e.g. ``progress``) may be read as a model with
the keys the client knows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from pydantic import BaseModel

from service.app import create_app
from service.client import Architecture, Dataset, Erasure, Job, JobEvent, JobMetrics, Model
from service.client.models import WebhookDelivery, WebhookSecret
from service.settings import Settings

# (client model, method, path, where in the 200 body the resource is) — every endpoint that
# answers with a resource the client parses.
ITEM, LIST_ITEM, PAGE_ITEM = (), ("items",), ("properties", "data", "items")
ENDPOINTS: tuple[tuple[type[BaseModel], str, str, tuple[str, ...]], ...] = (
    (Model, "post", "/v1/models", ITEM),
    (Model, "get", "/v1/models/{model_id}", ITEM),
    (Model, "get", "/v1/models", PAGE_ITEM),
    (Dataset, "post", "/v1/datasets", ITEM),
    (Dataset, "get", "/v1/datasets/{dataset_id}", ITEM),
    (Dataset, "get", "/v1/datasets", PAGE_ITEM),
    (Architecture, "get", "/v1/architectures", PAGE_ITEM),
    (Job, "post", "/v1/jobs", ITEM),
    (Job, "get", "/v1/jobs/{job_id}", ITEM),
    (Job, "get", "/v1/jobs", PAGE_ITEM),
    (Job, "post", "/v1/jobs/{job_id}/cancel", ITEM),
    (JobEvent, "get", "/v1/jobs/{job_id}/events", LIST_ITEM),
    (JobMetrics, "get", "/v1/jobs/{job_id}/metrics", ITEM),
    (Erasure, "get", "/v1/erasures", PAGE_ITEM),
    (WebhookDelivery, "get", "/v1/jobs/{job_id}/webhooks", LIST_ITEM),
    (WebhookSecret, "get", "/v1/webhooks/secret", ITEM),
)
# List endpoints may answer with summaries (fewer fields than the item): there the client
# only has to know every field it gets, not the other way round.
SUMMARIES = {"/v1/jobs"}


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("contract"))
    return create_app(settings).openapi()


class Schemas:
    """JSON schemas with their ``$ref`` targets (``#/components/schemas/`` or ``#/$defs/``)."""

    def __init__(self, defs: Mapping[str, Any]):
        self.defs = defs

    def resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        while "$ref" in schema:
            schema = self.defs[schema["$ref"].rsplit("/", 1)[-1]]
        return schema


def split_null(schema: Mapping[str, Any]) -> tuple[list[Mapping[str, Any]], bool]:
    """The non-null alternatives of a schema and whether null is allowed."""
    options = list(schema.get("anyOf") or schema.get("oneOf") or [schema])
    rest = [s for s in options if s.get("type") != "null"]
    return rest, len(rest) < len(options)


def is_free_object(schema: Mapping[str, Any]) -> bool:
    return schema.get("type") == "object" and "properties" not in schema and (
        schema.get("additionalProperties") in (None, True, {}))


def type_differences(where: str, client: Mapping[str, Any], cdefs: Schemas,
                     server: Mapping[str, Any], sdefs: Schemas) -> list[str]:
    """Why the client's ``client`` schema does not read what the server's ``server`` sends."""
    client, server = cdefs.resolve(client), sdefs.resolve(server)
    c_options, c_null = split_null(client)
    s_options, s_null = split_null(server)
    problems = [f"{where}: the server may send null, the client rejects it"] if (
        s_null and not c_null) else []
    if len(c_options) != 1 or len(s_options) != 1:
        if [dict(s) for s in c_options] != [dict(s) for s in s_options]:
            problems.append(f"{where}: {c_options} vs {s_options}")
        return problems
    c, s = cdefs.resolve(c_options[0]), sdefs.resolve(s_options[0])
    if "properties" in s or "properties" in c:
        if "properties" not in s and is_free_object(s):
            return problems  # the client reads a free-form object as a model: a refinement
        if "properties" not in c or "properties" not in s:
            return [*problems, f"{where}: object {c} vs {s}"]
        return problems + model_differences(where, c, cdefs, s, sdefs, exact=True)
    for key in ("type", "format", "enum", "const"):
        if c.get(key) != s.get(key):
            problems.append(f"{where}: {key} {c.get(key)!r} vs the server's {s.get(key)!r}")
    if s.get("type") == "array" and c.get("type") == "array":
        problems += type_differences(f"{where}[]", c.get("items") or {}, cdefs,
                                     s.get("items") or {}, sdefs)
    if s.get("type") == "object" and c.get("type") == "object":
        c_values, s_values = c.get("additionalProperties"), s.get("additionalProperties")
        if isinstance(s_values, dict) and s_values:
            problems += type_differences(f"{where}{{}}", c_values if isinstance(c_values, dict)
                                         else {}, cdefs, s_values, sdefs)
    return problems


def model_differences(where: str, client: Mapping[str, Any], cdefs: Schemas,
                      server: Mapping[str, Any], sdefs: Schemas, *, exact: bool) -> list[str]:
    c_fields, s_fields = client.get("properties", {}), server.get("properties", {})
    c_required, s_required = set(client.get("required", [])), set(server.get("required", []))
    problems = [f"{where}.{name}: served, but the client does not declare it"
                for name in s_fields if name not in c_fields]
    if exact:
        problems += [f"{where}.{name}: the client declares it, the server never sends it"
                     for name in c_fields if name not in s_fields]
    for name in c_fields.keys() & s_fields.keys():
        if name in c_required and name not in s_required:
            problems.append(f"{where}.{name}: required by the client, optional on the server")
        problems += type_differences(f"{where}.{name}", c_fields[name], cdefs,
                                     s_fields[name], sdefs)
    return problems


def served_schema(openapi: Mapping[str, Any], method: str, path: str,
                  inside: tuple[str, ...]) -> tuple[Mapping[str, Any], Schemas]:
    responses = openapi["paths"][path][method]["responses"]
    ok = responses.get("200") or responses.get("201") or responses.get("202")
    defs = Schemas(openapi["components"]["schemas"])
    schema = defs.resolve(ok["content"]["application/json"]["schema"])
    for key in inside:
        schema = defs.resolve(schema[key])
    return schema, defs


@pytest.mark.parametrize(("model", "method", "path", "inside"), ENDPOINTS,
                         ids=[f"{m.upper()} {p}" for _, m, p, _ in ENDPOINTS])
def test_the_client_model_matches_the_served_schema(openapi, model, method, path, inside):
    server, sdefs = served_schema(openapi, method, path, inside)
    client = model.model_json_schema()
    cdefs = Schemas(client.get("$defs", {}))

    problems = model_differences(model.__name__, client, cdefs, server, sdefs,
                                 exact=path not in SUMMARIES or inside == ITEM)

    assert problems == []


def test_the_check_catches_drift(openapi):
    """The comparison itself can fail: a renamed field, a wrong type, a missed null."""
    server, sdefs = served_schema(openapi, "get", "/v1/models/{model_id}", ITEM)

    class Drifted(Model):
        num_parameters: str | None = None  # the server sends an integer
        size: int | None = None  # the server calls it size_bytes

    class NoNull(Model):
        source_job_id: str = ""  # the server sends null for uploads

    drifted = model_differences("M", Drifted.model_json_schema(),
                                Schemas(Drifted.model_json_schema()["$defs"]), server, sdefs,
                                exact=True)
    no_null = model_differences("M", NoNull.model_json_schema(),
                                Schemas(NoNull.model_json_schema()["$defs"]), server, sdefs,
                                exact=True)

    assert any("num_parameters: type 'string'" in p for p in drifted), drifted
    assert any("M.size: the client declares it" in p for p in drifted), drifted
    assert no_null == ["M.source_job_id: the server may send null, the client rejects it"]


def test_the_contract_covers_every_route_that_returns_a_resource(openapi):
    """A new route answering with a component schema must be added to ENDPOINTS."""
    covered = {(method, path) for _, method, path, _ in ENDPOINTS}
    resource_routes = set()
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            ok = operation.get("responses", {}).get("200") or {}
            schema = (ok.get("content", {}).get("application/json") or {}).get("schema") or {}
            text = str(schema)
            if path.startswith("/v1/") and "#/components/schemas/" in text and not any(
                    name in text for name in UNCOVERED_SCHEMAS):
                resource_routes.add((method, path))

    assert resource_routes - covered == set()


# Schemas of routes the client does not parse into a model (yet).
UNCOVERED_SCHEMAS: tuple[str, ...] = ()
