"""Issue 12, class 2: a spec cannot make the server allocate its network. A tiny checkpoint
with a spec asking for a huge architecture (up to the 300 M-parameter cap, or past it, or
overflowing) is compared with the architecture on the meta device and refused: 422 naming the
problem, at a cost the spec does not choose — peak RSS growth of the server's process tree and
its CPU seconds, measured per request from /proc. (Building and initialising a 285 M-parameter
network costs over a GB and several CPU seconds.)"""

from __future__ import annotations

import io
import json

import torch

from tests.reliability.helpers import (
    assert_still_answers,
    files_under,
    server_cost,
)

MB = 10**6
RSS_BUDGET = 100 * MB  # issue 12: a rejected spec or checkpoint costs at most this much memory
CPU_BUDGET_S = 1.0  # ... and is answered in under a second (here: of the server's CPU)


def _torch_file(state_dict: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.getvalue()


def _post(client, spec: dict | str, content: bytes, filename: str):
    raw = spec if isinstance(spec, str) else json.dumps(spec)
    return client.post(
        "/v1/models",
        files={"file": (filename, content, "application/octet-stream")},
        data={"spec": raw},
    )


def _cases(safetensors: bytes, torch_zip: bytes) -> list[tuple[str, dict | str, bytes, str]]:
    """(name, spec, file, a word the problem names)."""
    return [
        ("mlp of 285 M parameters, safetensors",
         {"arch": "mlp", "arch_kwargs": {"in_features": 16384, "hidden": [16384],
                                         "num_classes": 1000}}, safetensors, "shape mismatch"),
        ("mlp of 285 M parameters, torch file",
         {"arch": "mlp", "arch_kwargs": {"in_features": 65536, "hidden": [4096, 4096],
                                         "num_classes": 10}}, torch_zip, "shape mismatch"),
        ("resnet18 with 500k classes (256 M)",
         {"arch": "resnet18", "arch_kwargs": {"num_classes": 500_000}}, safetensors,
         "missing keys"),
        ("tinynet on 4000x4000 images (164 M)",
         {"arch": "tinynet", "arch_kwargs": {"input_size": 4000}}, torch_zip, "missing keys"),
        ("vgg11 past the parameter cap",
         {"arch": "vgg11", "arch_kwargs": {"num_classes": 2**31 - 1}}, safetensors,
         "more than the limit"),
        ("tinynet whose sizes overflow",
         {"arch": "tinynet", "arch_kwargs": {"input_size": 2**31 - 1}}, safetensors,
         "cannot be built"),
        ("mlp with 65 hidden layers",
         {"arch": "mlp", "arch_kwargs": {"in_features": 64, "hidden": [10**6] * 65,
                                         "num_classes": 10}}, safetensors, "at most 64 items"),
        ("mlp with a 2^31 input",
         {"arch": "mlp", "arch_kwargs": {"in_features": 2**31, "hidden": [24],
                                         "num_classes": 10}}, torch_zip, "<= 2147483647"),
        ("mlp with a 400-digit width",
         '{"arch": "mlp", "arch_kwargs": {"in_features": 64, "hidden": [1%s], '
         '"num_classes": 10}}' % ("0" * 400), safetensors, "64 bits"),
    ]


def test_specs_asking_for_huge_networks_are_refused_without_building_them(
    embedded, upload_files
):
    client = embedded.client(timeout=300)  # the warm-up imports torchvision on a loaded machine
    safetensors = upload_files.model.read_bytes()
    torch_zip = _torch_file(upload_files.state_dict)
    artifacts = embedded.data_dir / "artifacts"
    models_before = client.get("/v1/models", params={"limit": 100}).json()["data"]
    before = files_under(artifacts)
    # Warm the paths (torchvision's import for resnet18, torch.load for zip files) so the
    # figures below are the requests' own.
    for spec in ({"arch": "resnet18", "arch_kwargs": {"num_classes": 10}},
                 {"arch": "tinynet"}):
        for content, filename in ((safetensors, "m.safetensors"), (torch_zip, "m.pt")):
            assert _post(client, spec, content, filename).status_code == 422

    failures, figures = [], []
    for name, spec, content, word in _cases(safetensors, torch_zip):
        filename = "m.pt" if content is torch_zip else "m.safetensors"
        with server_cost(embedded) as cost:
            response = _post(client, spec, content, filename)
        figures.append(f"{name}: {response.status_code} {cost}")
        body = response.json()
        text = body.get("detail", "") + json.dumps(body.get("errors", []))
        if response.status_code != 422 or word not in text:
            failures.append(f"{name}: {response.status_code} {response.text[:400]}")
        if cost.rss_growth > RSS_BUDGET or cost.cpu_s > CPU_BUDGET_S:
            failures.append(f"{name}: {cost}")
    print("\n".join(figures))
    assert not failures, "\n".join(failures)
    assert files_under(artifacts) == before, "a refused upload left a file behind"
    assert client.get("/v1/models", params={"limit": 100}).json()["data"] == models_before
    assert_still_answers(embedded)
