"""``/v1/models``: upload (safetensors and torch state dicts), strict loading, the size cap,
refusing pickles, listing with cursors, downloads with ETag and Range, delete."""

from __future__ import annotations

import hashlib
import json
import os

import torch
from safetensors.torch import load as load_safetensors

from tests.service.conftest import (
    TINY_MLP_SPEC,
    assert_problem,
    safetensors_bytes,
    tiny_state_dict,
    torch_bytes,
    upload_model,
)

MODEL_FIELDS = {
    "id", "name", "arch", "arch_kwargs", "input", "task", "num_parameters", "size_bytes",
    "sha256", "created_at", "source_job_id",
}


def _stored_files(settings) -> list[str]:
    root = settings.artifacts_dir
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )


def test_upload_safetensors_returns_the_model_object(client, alice):
    state_dict = tiny_state_dict()
    response = upload_model(client, alice, content=safetensors_bytes(state_dict))
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == MODEL_FIELDS
    assert body["id"].startswith("mdl_")
    assert response.headers["location"] == f"/v1/models/{body['id']}"
    assert (body["arch"], body["arch_kwargs"], body["name"]) == (
        "mlp", TINY_MLP_SPEC["arch_kwargs"], "tiny-mlp"
    )
    assert body["num_parameters"] == sum(v.numel() for v in state_dict.values())  # 4*3+3+3*3+3
    assert body["input"] == {"scale": 1.0, "mean": None, "std": None}
    assert body["task"] == "classification" and body["source_job_id"] is None
    assert client.get(f"/v1/models/{body['id']}", headers=alice).json() == body


def test_torch_state_dict_is_converted_to_safetensors(client, alice):
    state_dict = tiny_state_dict()
    response = upload_model(client, alice, content=torch_bytes(state_dict))
    assert response.status_code == 201, response.text
    body = response.json()
    content = client.get(f"/v1/models/{body['id']}/content", headers=alice)
    assert content.status_code == 200
    assert hashlib.sha256(content.content).hexdigest() == body["sha256"]
    assert int(content.headers["content-length"]) == body["size_bytes"] == len(content.content)
    restored = load_safetensors(content.content)
    assert set(restored) == set(state_dict)
    for key, value in state_dict.items():
        assert torch.equal(restored[key], value)


def test_strict_loading_names_missing_and_unexpected_keys(client, alice):
    state_dict = tiny_state_dict()
    state_dict["extra.weight"] = torch.zeros(2)
    del state_dict["2.bias"]
    body = assert_problem(
        upload_model(client, alice, content=safetensors_bytes(state_dict)), 422
    )
    assert "2.bias" in body["detail"] and "extra.weight" in body["detail"]
    locs = [e["loc"] for e in body["errors"]]
    assert ["body", "file", "2.bias"] in locs and ["body", "file", "extra.weight"] in locs


def test_shape_mismatch_is_422_naming_the_key(client, alice):
    state_dict = tiny_state_dict()
    state_dict["0.weight"] = torch.zeros(5, 4)
    body = assert_problem(
        upload_model(client, alice, content=safetensors_bytes(state_dict)), 422,
        loc=["body", "file", "0.weight"],
    )
    assert "0.weight" in body["detail"]


def test_bad_specs_are_422_with_the_field(client, alice):
    content = safetensors_bytes(tiny_state_dict())
    cases = [
        ({**TINY_MLP_SPEC, "arch": "no-such-arch"}, ["body", "spec", "arch"]),
        ({**TINY_MLP_SPEC, "arch_kwargs": {"in_features": 4}}, ["body", "spec", "arch_kwargs",
                                                                "hidden"]),
        ({**TINY_MLP_SPEC, "input": {"mean": [0.5]}}, ["body", "spec", "input"]),
        ({**TINY_MLP_SPEC, "colour": "red"}, ["body", "spec", "colour"]),
    ]
    for spec, loc in cases:
        assert_problem(upload_model(client, alice, spec=spec, content=content), 422, loc=loc)
    response = client.post(
        "/v1/models", headers=alice, files={"file": ("m", content)}, data={"spec": "{not json"}
    )
    assert_problem(response, 422)


def test_missing_parts_and_wrong_content_type(client, alice):
    no_file = client.post("/v1/models", headers=alice, data={"spec": json.dumps(TINY_MLP_SPEC)},
                          files={"other": ("x", b"1")})
    assert_problem(no_file, 422, loc=["body", "file"])
    no_spec = client.post("/v1/models", headers=alice, files={"file": ("m", b"123")})
    assert_problem(no_spec, 422, loc=["body", "spec"])
    as_json = client.post("/v1/models", headers=alice, json={"spec": TINY_MLP_SPEC})
    assert_problem(as_json, 415)
    garbage = client.post(
        "/v1/models",
        headers={**alice, "Content-Type": "multipart/form-data; boundary=xyz"},
        content=b"--xyz\r\nthis is not a part header\r\n",
    )
    assert "malformed multipart" in assert_problem(garbage, 400)["detail"]


def test_not_a_checkpoint_is_422(client, alice):
    body = assert_problem(upload_model(client, alice, content=b"definitely not weights"), 422)
    assert ["body", "file"] in [e["loc"] for e in body["errors"]]


class _Payload:
    """Unpickling this would create a marker file: proof that the pickle was executed."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_never_executed(client, alice, tmp_path, settings):
    marker = tmp_path / "pwned"
    content = torch_bytes({"0.weight": _Payload(str(marker))})
    body = assert_problem(upload_model(client, alice, content=content), 422)
    assert ["body", "file"] in [e["loc"] for e in body["errors"]]
    assert not marker.exists()
    assert _stored_files(settings) == []


def test_upload_over_the_cap_is_413_and_leaves_nothing(client, alice, settings):
    too_big = b"\0" * (settings.max_upload_bytes + 1)
    assert_problem(upload_model(client, alice, content=too_big), 413)
    assert _stored_files(settings) == []
    assert client.get("/v1/models", headers=alice).json()["data"] == []


def test_download_range_etag_and_conditional(client, alice):
    body = upload_model(client, alice).json()
    url, size = f"/v1/models/{body['id']}/content", body["size_bytes"]
    full = client.get(url, headers=alice)
    assert full.headers["etag"] == f'"{body["sha256"]}"'
    assert full.headers["accept-ranges"] == "bytes"

    part = client.get(url, headers={**alice, "Range": "bytes=10-19"})
    assert part.status_code == 206
    assert part.content == full.content[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{size}"
    assert part.headers["content-length"] == "10"

    tail = client.get(url, headers={**alice, "Range": "bytes=-7"})
    assert tail.status_code == 206 and tail.content == full.content[-7:]
    open_end = client.get(url, headers={**alice, "Range": f"bytes={size - 3}-"})
    assert open_end.status_code == 206 and open_end.content == full.content[-3:]

    beyond = client.get(url, headers={**alice, "Range": f"bytes={size}-"})
    assert_problem(beyond, 416)
    assert beyond.headers["content-range"] == f"bytes */{size}"

    cached = client.get(url, headers={**alice, "If-None-Match": full.headers["etag"]})
    assert cached.status_code == 304 and cached.content == b""


def test_corrupted_artifact_is_not_served(client, alice, settings):
    body = upload_model(client, alice).json()
    path = settings.artifacts_dir / body["sha256"][:2] / body["sha256"]
    path.write_bytes(b"flipped bits")
    response = client.get(f"/v1/models/{body['id']}/content", headers=alice)
    problem = assert_problem(response, 500)
    assert "integrity" in problem["detail"]
    assert b"flipped" not in response.content


def test_list_is_newest_first_with_cursor_pages(client, alice):
    ids = [upload_model(client, alice, spec={**TINY_MLP_SPEC, "name": f"m{i}"}).json()["id"]
           for i in range(5)]
    newest_first = list(reversed(ids))
    seen, after = [], None
    while True:
        query = "?limit=2" + (f"&after={after}" if after else "")
        page = client.get(f"/v1/models{query}", headers=alice).json()
        seen += [m["id"] for m in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert seen == newest_first
    bad_cursor = client.get("/v1/models?after=mdl_unknown", headers=alice)
    assert_problem(bad_cursor, 422, loc=["query", "after"])


def test_delete_hides_the_model(client, alice):
    model_id = upload_model(client, alice).json()["id"]
    assert client.delete(f"/v1/models/{model_id}", headers=alice).status_code == 204
    assert_problem(client.get(f"/v1/models/{model_id}", headers=alice), 404)
    assert_problem(client.get(f"/v1/models/{model_id}/content", headers=alice), 404)
    assert_problem(client.delete(f"/v1/models/{model_id}", headers=alice), 404)
    assert client.get("/v1/models", headers=alice).json()["data"] == []


def test_architectures_lists_the_registry_with_arguments(client, alice):
    body = client.get("/v1/architectures", headers=alice).json()
    by_name = {a["name"]: a for a in body["data"]}
    assert {"linear", "mlp", "tinynet", "resnet18", "vgg11"} <= set(by_name)
    tinynet_args = {a["name"]: a for a in by_name["tinynet"]["arguments"]}
    assert tinynet_args["num_classes"]["default"] == 10
    assert by_name["mlp"]["flat_input"] is True
    assert {a["name"] for a in by_name["mlp"]["arguments"]} == {
        "in_features", "hidden", "num_classes"
    }


def test_oversized_or_too_many_form_fields_are_refused(client, alice, settings):
    from service.api.uploads import MAX_TEXT_FIELD_BYTES, MAX_TEXT_FIELDS

    content = safetensors_bytes(tiny_state_dict())
    huge_spec = json.dumps({**TINY_MLP_SPEC, "name": "x" * MAX_TEXT_FIELD_BYTES})
    response = client.post("/v1/models", headers=alice, files={"file": ("m", content)},
                           data={"spec": huge_spec})
    assert "spec" in assert_problem(response, 413)["detail"]
    fields = {f"f{i}": "1" for i in range(MAX_TEXT_FIELDS + 1)}
    response = client.post("/v1/models", headers=alice, files={"file": ("m", content)},
                           data={"spec": json.dumps(TINY_MLP_SPEC), **fields})
    assert "too many form fields" in assert_problem(response, 400)["detail"]
    assert _stored_files(settings) == []
