"""Issue 12, class 4: numbers that overflow. ``NaN``, ``Infinity``, ``-Infinity`` and ``1e999``
(which JSON parsers read as infinity) are a 422 naming the field in every body and form field —
job bodies, model specs (their free-form ``arch_kwargs`` included), query parameters — and so
is an integer too large for its field; nothing is stored (no job, no model, no file) and the
server still answers. Bodies are sent as raw text: a JSON encoder would refuse to write them."""

from __future__ import annotations

import json

import pytest

from tests.reliability.helpers import assert_still_answers, files_under, server_cost
from tests.worker import digits

MB = 10**6
RSS_BUDGET = 50 * MB
NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"]


def _job_text(uploaded: dict, path: tuple[str, ...], literal: str) -> str:
    """A valid job body with the value at ``path`` replaced by the raw ``literal``."""
    body = {"model_id": uploaded["model"]["id"], "train_dataset_id": uploaded["dataset"]["id"],
            **digits.quick_request({"kind": "remove_class", "class": 3})}
    body["selection"] = {"criterion": "threshold", "ratio": 0.2, "threshold": 0.5}
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = "@@VALUE@@"
    return json.dumps(body).replace('"@@VALUE@@"', literal)


def _spec_text(path: tuple[str | int, ...], literal: str) -> str:
    spec = json.loads(json.dumps(digits.MLP_SPEC))
    spec["input"] = {"scale": 0.0625, "mean": [0.5], "std": [0.25]}
    target = spec
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = "@@VALUE@@"
    return json.dumps(spec).replace('"@@VALUE@@"', literal)


JOB_FLOATS = [("selection", "ratio"), ("selection", "threshold"), ("solver", "tol"),
              ("solver", "damping"), ("step", "scale")]
JOB_INTEGERS = [(("solver", "max_iter"), "10000000000000000000000000000000"),
                (("seed",), str(2**64)), (("edit", "class"), str(10**20)),
                (("solver", "hessian_samples"), str(2**63)),
                (("eval", "retain_samples"), "1" + "0" * 40),
                (("solver", "batch_size"), "1e999")]
SPEC_FIELDS = [("input", "scale"), ("input", "mean", 0), ("input", "std", 0),
               ("arch_kwargs", "in_features"), ("arch_kwargs", "hidden", 0),
               ("arch_kwargs", "made_up")]


def _job_cases(uploaded: dict) -> list[tuple[str, str, list]]:
    """(name, raw body, the loc the problem must name)."""
    cases = [(f"{'.'.join(path)} = {literal}", _job_text(uploaded, path, literal),
              ["body", *path])
             for path in JOB_FLOATS for literal in NON_FINITE]
    cases += [(f"{'.'.join(path)} = {literal[:12]}…", _job_text(uploaded, path, literal),
               ["body", *path]) for path, literal in JOB_INTEGERS]
    indices = _job_text(uploaded, ("edit",),
                        f'{{"kind": "remove_samples", "indices": [1, {10**20}]}}')
    cases.append(("edit.indices[1] = 1e20", indices, ["body", "edit", "indices", 1]))
    return cases


def test_non_finite_and_huge_numbers_in_job_bodies_are_422_and_queue_nothing(
    embedded, uploaded
):
    client = embedded.client()
    jobs_before = client.get("/v1/jobs", params={"limit": 100}).json()["data"]
    failures = []
    with server_cost(embedded) as cost:
        for name, text, loc in _job_cases(uploaded):
            response = client.post("/v1/jobs", content=text,
                                   headers={"Content-Type": "application/json"})
            body = response.json()
            locs = [e["loc"] for e in body.get("errors", [])]
            if response.status_code != 422 or loc not in locs:
                failures.append(f"{name}: {response.status_code} {response.text[:300]}")
        # An integer past Python's 4300-digit parsing limit cannot even be parsed: 400.
        huge = _job_text(uploaded, ("seed",), "9" * 5000)
        response = client.post("/v1/jobs", content=huge,
                               headers={"Content-Type": "application/json"})
        if response.status_code not in (400, 422):
            failures.append(f"5000-digit seed: {response.status_code} {response.text[:300]}")
    print(f"{len(_job_cases(uploaded)) + 1} job bodies: {cost}")
    assert not failures, "\n".join(failures)
    assert cost.rss_growth <= RSS_BUDGET, str(cost)
    assert client.get("/v1/jobs", params={"limit": 100}).json()["data"] == jobs_before
    assert_still_answers(embedded)


def test_non_finite_and_huge_numbers_in_specs_are_422_and_store_nothing(
    embedded, upload_files
):
    client = embedded.client()
    weights = upload_files.model.read_bytes()
    artifacts = embedded.data_dir / "artifacts"
    before = files_under(artifacts)
    models_before = client.get("/v1/models", params={"limit": 100}).json()["data"]
    failures = []
    for path in SPEC_FIELDS:
        # 2**64 is a finite float, but no integer argument takes it.
        too_big = [str(2**64)] if path[0] == "arch_kwargs" else []
        for literal in [*NON_FINITE, "-" + "9" * 400, *too_big]:
            spec = _spec_text(path, literal)
            response = client.post(
                "/v1/models", files={"file": ("m.safetensors", weights, "application/x")},
                data={"spec": spec})
            body = response.json()
            text = json.dumps(body.get("errors", []))
            named = str(path[0]) in text and (str(path[1]) in text or path[0] == "arch_kwargs")
            if response.status_code != 422 or not named:
                failures.append(f"spec {path} = {literal[:12]}: {response.status_code} "
                                f"{response.text[:300]}")
    assert not failures, "\n".join(failures)
    assert files_under(artifacts) == before
    assert client.get("/v1/models", params={"limit": 100}).json()["data"] == models_before
    assert_still_answers(embedded)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "1e999", str(2**64), "-1"])
@pytest.mark.parametrize("route", ["/v1/jobs", "/v1/models", "/v1/datasets"])
def test_non_finite_and_huge_query_numbers_are_422(embedded, route, value):
    response = embedded.client().get(route, params={"limit": value})
    assert response.status_code == 422, response.text
    assert ["query", "limit"] in [e["loc"] for e in response.json()["errors"]]


def test_a_valid_job_echoes_only_finite_numbers(embedded, uploaded):
    """The other side: what is accepted is stored and echoed as the finite numbers sent."""
    client = embedded.client()
    text = _job_text(uploaded, ("selection", "threshold"), "1e300")
    response = client.post("/v1/jobs", content=text, headers={"Content-Type": "application/json"})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["request"]["selection"]["threshold"] == 1e300
    assert "NaN" not in response.text and "Infinity" not in response.text
    client.post(f"/v1/jobs/{job['id']}/cancel")
