"""Issue 12, class 3: no file reaches a 500 or a cut connection, on the model and the dataset
routes of a live server.

The named cases first (safetensors shapes whose element count or strides overflow 64 bits
while a zero dimension makes the byte count check out; torch files holding meta-device tensors
or expanded views that claim far more than their storage), then a seeded fuzz of hundreds of
mutations of good files: header length fields, dtypes, shapes, offsets, metadata, JSON
structure, truncations, byte flips, .npy headers. Every answer is a 4xx problem+json (or a 201
for a mutation that is still a valid file), the server's peak RSS stays bounded, only accepted
uploads are on disk afterwards, and the server still answers."""

from __future__ import annotations

import io
import json
import random
import struct
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import save as save_safetensors

from tests.reliability.helpers import (
    assert_still_answers,
    files_under,
    server_cost,
)
from tests.worker import digits

MB = 10**6
RSS_BUDGET = 100 * MB
PROBLEM = "application/problem+json"
SEED = 12


def _safetensors(header: dict, payload: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


def _torch_file(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _dataset_safetensors(x: np.ndarray, y: np.ndarray) -> bytes:
    return save_safetensors({"x": torch.from_numpy(x), "y": torch.from_numpy(y)})


OVERFLOWING_SHAPES = [[0, 2**40, 2**40], [2**63, 0], [0, 2**62, 4], [2**64 - 1, 0],
                      [0] + [2**16] * 5]


def named_cases(state: dict) -> list[tuple[str, str, bytes]]:
    """(name, route, file) of the failures issue 12 found, each in several variants."""
    cases = []
    for shape in OVERFLOWING_SHAPES:
        entry = {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}
        cases.append((f"model tensor {shape}", "models", _safetensors({"0.weight": entry})))
        good = {k: {"dtype": "F32", "shape": list(v.shape), "data_offsets": [0, 0]}
                for k, v in state.items()}
        # Every other tensor of the model right but empty, the overflowing one among them.
        cases.append((f"model with {shape} among others", "models",
                      _safetensors({**good, "0.weight": entry})))
        cases.append((f"dataset x {shape}", "datasets", _safetensors(
            {"x": entry, "y": {"dtype": "I64", "shape": [0], "data_offsets": [0, 0]}})))
        cases.append((f"dataset y {shape}", "datasets", _safetensors(
            {"x": {"dtype": "U8", "shape": [1, 4], "data_offsets": [0, 4]},
             "y": {"dtype": "I64", "shape": shape, "data_offsets": [4, 4]}}, b"\0" * 4)))
    meta = {k: v.to("meta") for k, v in state.items()}
    cases.append(("torch file of meta tensors", "models", _torch_file(meta)))
    cases.append(("torch file with one meta tensor", "models",
                  _torch_file({**state, "2.bias": state["2.bias"].to("meta")})))
    cases.append(("meta tensors as a dataset", "datasets",
                  _torch_file({"x": torch.empty(10, 4, device="meta"),
                               "y": torch.empty(10, dtype=torch.long, device="meta")})))
    expanded = {k: v.clone() for k, v in state.items()}
    expanded["0.weight"] = torch.zeros(1).expand(*state["0.weight"].shape)
    cases.append(("expanded view of one number (model shape)", "models", _torch_file(expanded)))
    cases.append(("expanded view claiming 4 TiB", "models",
                  _torch_file({"0.weight": torch.zeros(1).expand(2**20, 2**20)})))
    shared = {f"w{i}": torch.zeros(2**16) for i in range(1)}
    shared.update({f"v{i}": shared["w0"] for i in range(200)})  # 200 views of one storage
    cases.append(("200 keys sharing one storage", "models", _torch_file(shared)))
    return cases


# ------------------------------------------------------------------ the fuzz


HEADER_VALUES = {
    "dtype": ["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "C64", "I128", "",
              "f32", 3, None, ["F32"]],
    "shape": [[], [0], [1], [-1], [2**63], [2**64], [1.5], ["3"], [[2]], None, 7,
              [2**31, 2**31, 2**31], [0, 2**63 - 1], [3, 0, 2**62]],
    "data_offsets": [[0, 0], [0, 4], [4, 0], [0, 2**64], [-4, 0], [0], [0, 4, 8], [0.0, 4.0],
                     None, "0,4", [2**63, 2**63 + 4]],
}


def _split(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def _mutate_safetensors(data: bytes, rng: random.Random) -> bytes:
    header, payload = _split(data)
    kind = rng.randrange(9)
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    if kind == 0:  # one field of one entry
        field = rng.choice(sorted(HEADER_VALUES))
        header[name] = {**header[name], field: rng.choice(HEADER_VALUES[field])}
        return _safetensors(header, payload)
    if kind == 1:  # a field dropped or added
        entry = dict(header[name])
        if rng.random() < 0.5:
            entry.pop(rng.choice(sorted(entry)))
        else:
            entry["extra"] = 1
        header[name] = entry
        return _safetensors(header, payload)
    if kind == 2:  # metadata that is not strings, or not a map
        header["__metadata__"] = rng.choice([{"a": 1}, ["x"], "x", {"a": None}, {"b": {"c": 1}}])
        return _safetensors(header, payload)
    if kind == 3:  # the length field lies
        raw = data[8 : 8 + struct.unpack("<Q", data[:8])[0]]
        length = rng.choice([0, 1, 7, len(raw) - 1, len(raw) + 1, len(data), 2**63, 2**64 - 1,
                             100_000_001, rng.randrange(2**32)])
        return struct.pack("<Q", length) + raw + payload
    if kind == 4:  # JSON that is not an object, duplicate keys, invalid UTF-8
        raw = rng.choice([b"[1, 2]", b"null", b"{", b'{"a": 1, "a": 2}', b"\xff\xfe{}",
                          json.dumps(header).encode()[:-1], b"{}"])
        return struct.pack("<Q", len(raw)) + raw + payload
    if kind == 5:  # truncated anywhere
        return data[: rng.randrange(len(data))]
    if kind == 6:  # bytes flipped in the header
        mutable = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            position = rng.randrange(8, 8 + struct.unpack("<Q", data[:8])[0])
            mutable[position] = rng.randrange(256)
        return bytes(mutable)
    if kind == 7:  # bytes flipped in the data (NaN, Inf, or just other weights)
        mutable = bytearray(data)
        start = len(data) - len(payload)
        for _ in range(rng.randrange(1, 16)):
            mutable[rng.randrange(start, len(data))] = rng.choice([0xFF, 0x7F, 0x80, 0x00])
        return bytes(mutable)
    # kind 8: trailing garbage, or the data shifted
    return data + b"\0" * rng.randrange(1, 64) if rng.random() < 0.5 else data[:8] + data[9:]


def _mutate_npz(data: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return data[: rng.randrange(len(data))]
    if kind == 1:
        mutable = bytearray(data)
        for _ in range(rng.randrange(1, 8)):
            mutable[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(mutable)
    # An .npy header that lies about its array, in a well-formed zip.
    descr = rng.choice(["<f4", ">f4", "|u1", "<f8", "<c8", "|O", "<U3", "|V8", "<i8", "|b1"])
    shape = rng.choice([(10, 4), (0, 4), (2**40, 4), (10,), (10, 0), (2**31, 2**31), ()])
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": descr, "fortran_order": rng.random() < 0.2, "shape": shape})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.npy", header.getvalue() + bytes(rng.randrange(0, 200)))
        labels = io.BytesIO()
        np.save(labels, np.arange(10) % 3)
        archive.writestr("y.npy" if kind == 2 else "z.npy", labels.getvalue())
    return buffer.getvalue()


def _mutate_torch(data: bytes, rng: random.Random) -> bytes:
    mutable = bytearray(data)
    if rng.random() < 0.4:
        return bytes(mutable[: rng.randrange(len(data))])
    for _ in range(rng.randrange(1, 8)):
        mutable[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(mutable)


def fuzz_cases(state: dict, count: int) -> list[tuple[str, str, bytes]]:
    rng = random.Random(SEED)
    x, y = digits.digits_arrays(60)
    sources = [
        ("models", digits.safetensors_bytes(state), _mutate_safetensors),
        ("models", _torch_file(state), _mutate_torch),
        ("datasets", _dataset_safetensors(x, y), _mutate_safetensors),
        ("datasets", _npz(x=x, y=y), _mutate_npz),
    ]
    weights = [4, 1, 3, 2]
    cases = []
    for i in range(count):
        route, good, mutate = rng.choices(sources, weights)[0]
        cases.append((f"fuzz {i} ({route}, {mutate.__name__})", route, mutate(good, rng)))
    return cases


def _post(client, route: str, content: bytes):
    form = {"spec": json.dumps(digits.MLP_SPEC)} if route == "models" else {"name": "fuzz"}
    return client.post(f"/v1/{route}", files={"file": ("f", content, "application/octet-stream")},
                       data=form)


@pytest.mark.parametrize("which", ["named", "fuzz"])
def test_no_file_reaches_a_500(embedded, upload_files, which):
    client = embedded.client(timeout=120)
    artifacts = embedded.data_dir / "artifacts"
    state = upload_files.state_dict
    cases = named_cases(state) if which == "named" else fuzz_cases(state, 300)
    for route in ("models", "datasets"):  # warm both routes
        _post(client, route, b"warm-up")
    before = files_under(artifacts)
    accepted, failures, statuses = set(), [], {}
    with server_cost(embedded) as cost:
        for name, route, content in cases:
            try:
                response = _post(client, route, content)
            except Exception as err:  # a reset connection is a failure too
                failures.append(f"{name}: {type(err).__name__}: {err}")
                continue
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code == 201:
                if which == "named":
                    failures.append(f"{name}: accepted")
                accepted.add(response.json()["sha256"])
                continue
            is_problem = response.headers.get("content-type", "").startswith(PROBLEM)
            if not (400 <= response.status_code < 500 and is_problem):
                failures.append(f"{name}: {response.status_code} {response.text[:300]}")
    print(f"{which}: {len(cases)} files, statuses {statuses}, {cost}")
    assert not failures, "\n".join(failures)
    assert cost.rss_growth <= RSS_BUDGET, str(cost)
    new = {p.name for p in files_under(artifacts) - before}
    assert new <= accepted, f"refused uploads left files behind: {new - accepted}"
    assert not (files_under(artifacts / "tmp")), "staging files left behind"
    assert_still_answers(embedded)
