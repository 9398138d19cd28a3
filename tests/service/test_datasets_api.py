"""``/v1/datasets``: upload (.npz and safetensors), metadata computed from the arrays, unsafe
files refused, built-ins listed after the uploads, owner scoping, delete."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import torch
from safetensors.torch import save as save_safetensors

from tests.service.conftest import assert_problem, tiny_dataset, upload_dataset

DATASET_FIELDS = {
    "id", "name", "num_samples", "sample_shape", "dtype", "num_classes", "class_counts",
    "sha256", "created_at",
}


def test_upload_npz_reports_metadata_from_the_arrays(client, alice):
    x = np.random.default_rng(1).integers(0, 256, size=(12, 1, 5, 5), dtype=np.uint8)
    y = np.array([0, 2, 2, 4, 4, 4, 0, 0, 2, 4, 4, 0])
    response = upload_dataset(client, alice, x, y, name="images")
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) >= DATASET_FIELDS
    assert body["id"].startswith("ds_")
    assert response.headers["location"] == f"/v1/datasets/{body['id']}"
    assert body["name"] == "images"
    assert body["num_samples"] == 12 and body["sample_shape"] == [1, 5, 5]
    assert body["dtype"] == "uint8"
    assert body["num_classes"] == 5
    assert body["class_counts"] == [int((y == c).sum()) for c in range(5)]
    assert client.get(f"/v1/datasets/{body['id']}", headers=alice).json() == body


def test_upload_safetensors_dataset(client, alice):
    x = torch.randn(7, 3)
    y = torch.tensor([0, 1, 1, 0, 1, 1, 1])
    content = save_safetensors({"x": x, "y": y})
    response = client.post(
        "/v1/datasets", headers=alice, files={"file": ("d.safetensors", content)},
        data={"name": "st"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["num_samples"], body["sample_shape"], body["dtype"]) == (7, [3], "float32")
    assert body["class_counts"] == [2, 5]
    assert body["sha256"] == hashlib.sha256(content).hexdigest()


def test_object_arrays_and_junk_are_422_without_unpickling(client, alice, tmp_path):
    buffer = io.BytesIO()
    np.savez(buffer, x=np.array([object(), object()], dtype=object), y=np.array([0, 1]))
    pickled = client.post(
        "/v1/datasets", headers=alice, files={"file": ("d.npz", buffer.getvalue())},
        data={"name": "evil"},
    )
    assert_problem(pickled, 422, loc=["body", "file"])
    junk = client.post(
        "/v1/datasets", headers=alice, files={"file": ("d.npz", b"PK\x03\x04 nonsense")},
        data={"name": "junk"},
    )
    assert_problem(junk, 422, loc=["body", "file"])
    x, _ = tiny_dataset(4)
    mismatched = upload_dataset(client, alice, x, np.array([0, 1, 2]))
    assert_problem(mismatched, 422, loc=["body", "file"])
    assert client.get("/v1/datasets?limit=100", headers=alice).json()["data"][0]["id"].startswith(
        "builtin:"
    )


def test_missing_name_or_file_is_422(client, alice):
    x, y = tiny_dataset(4)
    no_name = upload_dataset(client, alice, x, y, name="")
    assert_problem(no_name, 422, loc=["body", "name"])
    no_file = client.post("/v1/datasets", headers=alice, data={"name": "n"},
                          files={"x": ("x", b"")})
    assert_problem(no_file, 422, loc=["body", "file"])


def test_list_has_uploads_newest_first_then_builtins(client, alice, bob):
    x, y = tiny_dataset(6)
    first = upload_dataset(client, alice, x, y, name="first").json()["id"]
    second = upload_dataset(client, alice, x, y, name="second").json()["id"]
    upload_dataset(client, bob, x, y, name="bobs")
    listing = client.get("/v1/datasets?limit=100", headers=alice).json()
    ids = [d["id"] for d in listing["data"]]
    assert ids[:2] == [second, first]
    builtins = ids[2:]
    assert builtins and all(i.startswith("builtin:") for i in builtins)
    assert "builtin:digits:train" in builtins
    digits = next(d for d in listing["data"] if d["id"] == "builtin:digits:train")
    assert digits["builtin"] is True and digits["sample_shape"] == [1, 8, 8]
    assert digits["num_classes"] == 10 and sum(digits["class_counts"]) == digits["num_samples"]

    paged, after = [], None
    while True:
        query = "?limit=1" + (f"&after={after}" if after else "")
        page = client.get(f"/v1/datasets{query}", headers=alice).json()
        paged += [d["id"] for d in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert paged == ids


def test_builtin_get_and_unknown_ids(client, alice, bob):
    digits = client.get("/v1/datasets/builtin:digits:test", headers=alice)
    assert digits.status_code == 200 and digits.json()["num_samples"] > 0
    assert_problem(client.get("/v1/datasets/builtin:nope:train", headers=alice), 404)
    x, y = tiny_dataset(4)
    dataset_id = upload_dataset(client, alice, x, y).json()["id"]
    assert_problem(client.get(f"/v1/datasets/{dataset_id}", headers=bob), 404)
    assert_problem(client.delete(f"/v1/datasets/{dataset_id}", headers=bob), 404)


def test_delete_dataset(client, alice):
    x, y = tiny_dataset(4)
    dataset_id = upload_dataset(client, alice, x, y).json()["id"]
    assert client.delete(f"/v1/datasets/{dataset_id}", headers=alice).status_code == 204
    assert_problem(client.get(f"/v1/datasets/{dataset_id}", headers=alice), 404)
    assert_problem(client.delete("/v1/datasets/builtin:digits:train", headers=alice), 409)
