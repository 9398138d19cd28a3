"""Property-based fuzzing of every operation in ``/openapi.json`` (schemathesis, in-process
ASGI, a valid API key): no input may produce a 5xx, and every documented response must match
its schema. The number of examples per operation is bounded so the run stays short."""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance

from service.app import create_app
from tests.service.conftest import upload_model

EXAMPLES_PER_OPERATION = {GenerationMode.POSITIVE: 10, GenerationMode.NEGATIVE: 6}


@pytest.fixture
def fuzz_app(settings):
    return create_app(settings)


@pytest.fixture
def fuzz_key(make_key) -> str:
    return make_key("fuzzer")


def _fuzz_operation(operation, mode: GenerationMode, headers: dict[str, str]) -> None:
    @given(case=operation.as_strategy(mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION[mode],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case):
        case.call_and_validate(
            headers=headers, checks=[not_a_server_error, response_schema_conformance]
        )

    run()


def test_no_input_causes_a_server_error(fuzz_app, fuzz_key):
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    headers = {"Authorization": f"Bearer {fuzz_key}"}
    with TestClient(fuzz_app):  # run the lifespan, as a served app would
        # Something real for the generated ids to miss or hit.
        created = upload_model(TestClient(fuzz_app), headers)
        assert created.status_code == 201, created.text
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 13
        for operation in operations:
            for mode in GenerationMode:
                try:
                    _fuzz_operation(operation, mode, headers)
                except Unsatisfiable:
                    # No parameters to break (e.g. /healthz): nothing negative to generate.
                    assert mode is GenerationMode.NEGATIVE
                except Exception as err:
                    err.add_note(f"fuzzing {operation.method.upper()} {operation.path} ({mode})")
                    raise


def test_openapi_documents_every_route_and_problem_responses(fuzz_app, fuzz_key):
    with TestClient(fuzz_app) as client:
        document = client.get("/openapi.json").json()
        paths = set(document["paths"])
        assert {
            "/v1/models", "/v1/models/{model_id}", "/v1/models/{model_id}/content",
            "/v1/architectures", "/v1/datasets", "/v1/datasets/{dataset_id}", "/v1/jobs",
            "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/events",
            "/v1/jobs/{job_id}/metrics", "/healthz", "/readyz",
        } <= paths
        upload = document["paths"]["/v1/models"]["post"]
        assert "multipart/form-data" in upload["requestBody"]["content"]
        assert "application/problem+json" in upload["responses"]["422"]["content"]
        assert "bearer" in str(document["components"]["securitySchemes"]).lower()
