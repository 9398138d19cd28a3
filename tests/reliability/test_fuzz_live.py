"""Schemathesis over the whole OpenAPI document of a LIVE server (real uvicorn process, real
HTTP), with a valid key and a bounded number of examples per operation: no input produces a
5xx and every response matches its documented schema. (helper D's tests/service/test_fuzz.py
does the same in-process against the ASGI app.)"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance

from tests.reliability.hostile_numbers import add_hostile_numbers

EXAMPLES = {GenerationMode.POSITIVE: 6, GenerationMode.NEGATIVE: 4}


def _fuzz(operation, mode: GenerationMode, base_url: str, headers: dict[str, str]) -> None:
    @given(case=operation.as_strategy(mode))
    @settings(
        max_examples=EXAMPLES[mode],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case):
        case.call_and_validate(
            base_url=base_url,
            headers=headers,
            checks=[not_a_server_error, response_schema_conformance],
            timeout=30,
        )

    run()


@pytest.mark.parametrize("numbers", ["generated", "hostile"])
def test_fuzzing_the_live_server_finds_no_500_and_no_schema_violation(
    embedded, uploaded, numbers
):
    schema = schemathesis.openapi.from_url(embedded.url + "/openapi.json")
    assert schema.config.generation.allow_x00  # NUL bytes in strings too
    carried = add_hostile_numbers(schema) if numbers == "hostile" else []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:
        for mode in GenerationMode:
            try:
                _fuzz(operation, mode, embedded.url, embedded.headers)
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # nothing to break (e.g. /healthz)
            except Exception as err:
                err.add_note(f"fuzzing {operation.method.upper()} {operation.path} ({mode})")
                raise
    assert embedded.running
    if numbers == "hostile":  # the hostile numbers did reach the routes that take bodies
        refused = [operation for operation, status in carried if status == 422]
        assert {"POST /v1/jobs", "POST /v1/models"} <= set(refused), carried
        assert all(400 <= status < 500 for _, status in carried), carried
