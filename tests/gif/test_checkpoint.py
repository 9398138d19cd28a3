"""Safe checkpoint IO: what loads, what is refused (and that a refused pickle never ran)."""

from __future__ import annotations

import json
import pickle
import struct
import zipfile

import pytest
import torch
from torch import nn

from gif.checkpoint import (
    check_checkpoint,
    load_model,
    load_state_dict_strict,
    non_finite_count,
    read_layout,
    read_state_dict,
    representable,
    write_safetensors,
)
from gif.errors import InvalidCheckpoint
from gif.registry import build_model
from gif.spec import ModelSpec
from tests.reliability.helpers import peak_rss_growth

torch.set_num_threads(1)


def _state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "0.weight": torch.randn(4, 3, generator=g),
        "0.bias": torch.randn(4, generator=g, dtype=torch.float64),
        "bn.num_batches_tracked": torch.tensor(7),
        "mask": torch.tensor([True, False]),
        "half": torch.randn(2, 2, generator=g).to(torch.bfloat16),
        "empty": torch.zeros(0, 5),
    }


def _assert_equal_dicts(a: dict, b: dict) -> None:
    assert list(a) == list(b) or sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


def _raw_safetensors(path, header: dict, data: bytes, header_len: int | None = None) -> None:
    raw = json.dumps(header).encode()
    length = len(raw) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", length) + raw + data)


# --- what loads -----------------------------------------------------------------------------


def test_safetensors_round_trip_is_exact_and_atomic(tmp_path):
    sd = _state_dict()
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old content")
    write_safetensors(sd, target, metadata={"arch": "mlp"})
    _assert_equal_dicts(read_state_dict(target), sd)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp file left


def test_write_safetensors_separates_shared_and_non_contiguous_tensors(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    sd = {"a": base, "tied": base, "t": base.t()}
    write_safetensors(sd, tmp_path / "x.safetensors")
    back = read_state_dict(tmp_path / "x.safetensors")
    assert torch.equal(back["tied"], base) and torch.equal(back["t"], base.t())


def test_torch_files_plain_and_wrapped_with_parameters(tmp_path):
    sd = _state_dict()
    torch.save(sd, tmp_path / "plain.pt")
    _assert_equal_dicts(read_state_dict(tmp_path / "plain.pt"), sd)
    wrapped = {"state_dict": {k: nn.Parameter(v, requires_grad=False) if v.is_floating_point()
                              else v for k, v in sd.items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "wrapped.pt")
    back = read_state_dict(tmp_path / "wrapped.pt")
    _assert_equal_dicts(back, sd)
    assert all(type(v) is torch.Tensor for v in back.values())


def test_format_is_detected_by_content_not_by_name(tmp_path):
    sd = _state_dict()
    write_safetensors(sd, tmp_path / "really_safetensors.pt")
    torch.save(sd, tmp_path / "really_torch.safetensors")
    _assert_equal_dicts(read_state_dict(tmp_path / "really_safetensors.pt"), sd)
    _assert_equal_dicts(read_state_dict(tmp_path / "really_torch.safetensors"), sd)


# --- unsafe content is refused and never executed -------------------------------------------


class _Malicious:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling would create the marker file


def test_malicious_torch_pickle_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"weight": torch.ones(2), "payload": _Malicious(marker)}, tmp_path / "evil.pt")
    with pytest.raises(InvalidCheckpoint) as info:
        read_state_dict(tmp_path / "evil.pt")
    assert "refused: needs unpickling of arbitrary objects" in str(info.value)
    assert "open" in str(info.value)  # names the refused global
    assert not marker.exists()


def test_bare_pickle_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"w": _Malicious(marker)}))
    with pytest.raises(InvalidCheckpoint, match="refused: needs unpickling of arbitrary objects"):
        read_state_dict(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_legacy_torch_format_is_refused(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(InvalidCheckpoint, match="legacy PyTorch format"):
        read_state_dict(tmp_path / "old.pt")


def test_compressed_zip_pretending_to_be_torch_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "bomb.pt", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * 1_000_000)
    with pytest.raises(InvalidCheckpoint, match="is compressed"):
        read_state_dict(tmp_path / "bomb.pt")


# --- malformed files ------------------------------------------------------------------------


def _torch_zip_with_patched_pickle(tmp_path, old: bytes, new: bytes):
    """A real torch.save file whose data.pkl has one opcode sequence replaced."""
    torch.save({"w": torch.ones(3)}, tmp_path / "orig.pt")
    with zipfile.ZipFile(tmp_path / "orig.pt") as archive:
        members = [(i.filename, archive.read(i.filename)) for i in archive.infolist()]
    target = tmp_path / "patched.pt"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as out:
        for name, data in members:
            if name.endswith("data.pkl"):
                assert data.count(old) == 1
                data = data.replace(old, new)
            out.writestr(name, data)
    return target


def test_torch_storage_larger_than_its_record_is_refused_without_allocating(tmp_path):
    # The storage of 3 floats is declared as 2e9 elements (8 GB): torch checks the record size.
    path = _torch_zip_with_patched_pickle(tmp_path, b"cpuq\x06K\x03",
                                          b"cpuq\x06J" + struct.pack("<i", 2 * 10**9))
    with pytest.raises(InvalidCheckpoint, match="corrupt or truncated PyTorch checkpoint: "
                                                "record size"):
        read_state_dict(path)


def test_torch_tensor_view_beyond_its_storage_is_refused(tmp_path):
    # The tensor claims 1e9 elements of a 3-element storage.
    path = _torch_zip_with_patched_pickle(tmp_path, b"K\x00K\x03\x85",
                                          b"K\x00J" + struct.pack("<i", 10**9) + b"\x85")
    with pytest.raises(InvalidCheckpoint, match="corrupt or truncated PyTorch checkpoint"):
        read_state_dict(path)


def test_a_zip_that_is_not_a_torch_checkpoint(tmp_path):
    import numpy as np

    np.savez(tmp_path / "arrays.npz", x=np.zeros(3))
    with pytest.raises(InvalidCheckpoint, match="no data.pkl: not a PyTorch checkpoint"):
        read_state_dict(tmp_path / "arrays.npz")


def test_truncated_torch_checkpoint(tmp_path):
    torch.save(_state_dict(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidCheckpoint, match="corrupt or truncated"):
        read_state_dict(tmp_path / "cut.pt")


def test_truncated_safetensors(tmp_path):
    write_safetensors(_state_dict(), tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-10])
    with pytest.raises(InvalidCheckpoint, match="file holds only .* \\(truncated\\?\\)"):
        read_state_dict(tmp_path / "cut.safetensors")


def test_safetensors_absurd_header_size(tmp_path):
    _raw_safetensors(tmp_path / "a.safetensors", {}, b"", header_len=2**62)
    with pytest.raises(InvalidCheckpoint, match="header size .* is absurd"):
        read_state_dict(tmp_path / "a.safetensors")
    _raw_safetensors(tmp_path / "b.safetensors", {}, b"", header_len=5000)
    with pytest.raises(InvalidCheckpoint, match="header claims 5,000 bytes"):
        read_state_dict(tmp_path / "b.safetensors")


def test_safetensors_header_claiming_more_data_than_the_file_holds(tmp_path):
    # 10^12 floats claimed, 16 bytes present: refused from the header, nothing allocated.
    header = {"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}}
    _raw_safetensors(tmp_path / "huge.safetensors", header, b"\0" * 16)
    with pytest.raises(InvalidCheckpoint, match="claims 4,000,000,000,000 data bytes"):
        read_state_dict(tmp_path / "huge.safetensors")


@pytest.mark.parametrize(
    ("header", "data", "fragment"),
    [
        ({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 16]}}, b"\0" * 16,
         "needs 4,000 bytes but its offsets span 16"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12,
         "overlaps the previous tensor"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12,
         "leaves a gap"),
        ({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 2,
         "unsupported dtype 'F8_E4M3'"),
        ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8,
         "is not a list of sizes"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12,
         "4 trailing bytes"),
        ({"w": [1, 2]}, b"", "entry must have exactly dtype, shape, data_offsets"),
    ],
)
def test_malformed_safetensors_headers(tmp_path, header, data, fragment):
    _raw_safetensors(tmp_path / "m.safetensors", header, data)
    with pytest.raises(InvalidCheckpoint) as info:
        read_state_dict(tmp_path / "m.safetensors")
    assert fragment in str(info.value)


def test_safetensors_header_that_is_not_json(tmp_path):
    (tmp_path / "j.safetensors").write_bytes(struct.pack("<Q", 6) + b"{nope}")
    with pytest.raises(InvalidCheckpoint, match="not valid JSON"):
        read_state_dict(tmp_path / "j.safetensors")


def test_non_tensor_values_are_refused(tmp_path):
    torch.save({"w": torch.ones(2), "epoch": 3}, tmp_path / "n.pt")
    with pytest.raises(InvalidCheckpoint, match="value of 'epoch' is a int, not a tensor"):
        read_state_dict(tmp_path / "n.pt")
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    with pytest.raises(InvalidCheckpoint, match="holds a list, not a state dict"):
        read_state_dict(tmp_path / "list.pt")
    torch.save({}, tmp_path / "empty.pt")
    with pytest.raises(InvalidCheckpoint, match="empty state dict"):
        read_state_dict(tmp_path / "empty.pt")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_are_refused_in_both_formats(tmp_path, bad):
    sd = {"ok": torch.ones(3), "w": torch.tensor([1.0, bad, 2.0, bad])}
    torch.save(sd, tmp_path / "n.pt")
    write_safetensors(sd, tmp_path / "n.safetensors")
    expected = r"tensor 'w' has 2 NaN/Inf value\(s\) out of 4"
    for name in ("n.pt", "n.safetensors"):
        with pytest.raises(InvalidCheckpoint, match=expected):
            read_state_dict(tmp_path / name)


def test_unsupported_torch_dtype_is_refused(tmp_path):
    torch.save({"w": torch.ones(2, dtype=torch.complex64)}, tmp_path / "c.pt")
    with pytest.raises(InvalidCheckpoint, match="'w' has unsupported dtype torch.complex64"):
        read_state_dict(tmp_path / "c.pt")


@pytest.mark.parametrize("content", [b"", b"hello world, not a checkpoint", b"\x00" * 64])
def test_unrecognised_content(tmp_path, content):
    (tmp_path / "x.bin").write_bytes(content)
    with pytest.raises(InvalidCheckpoint, match="unrecognised checkpoint format"):
        read_state_dict(tmp_path / "x.bin")


def test_missing_file(tmp_path):
    with pytest.raises(InvalidCheckpoint, match="does not exist"):
        read_state_dict(tmp_path / "nope.safetensors")


# --- strict loading into an architecture ----------------------------------------------------

MLP = ModelSpec(arch="mlp", arch_kwargs={"in_features": 3, "hidden": [4], "num_classes": 2})


def test_strict_load_names_missing_unexpected_and_mis_shaped_keys():
    model = build_model(MLP)
    sd = dict(model.state_dict())
    del sd["2.bias"]
    sd["extra.weight"] = torch.ones(1)
    sd["0.weight"] = torch.ones(4, 5)
    with pytest.raises(InvalidCheckpoint) as info:
        load_state_dict_strict(model, sd)
    message = str(info.value)
    assert "missing keys: 2.bias" in message
    assert "unexpected keys: extra.weight" in message
    assert "0.weight (checkpoint [4, 5], model [4, 3])" in message
    assert info.value.details["mismatched"] == [
        {"key": "0.weight", "checkpoint_shape": [4, 5], "model_shape": [4, 3]}]
    assert info.value.details["missing"] == ["2.bias"]
    assert info.value.details["unexpected"] == ["extra.weight"]


def test_strict_load_refuses_integer_tensors_for_float_parameters():
    model = build_model(MLP)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["0.bias"] = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(InvalidCheckpoint, match="integer/bool tensors for floating parameters: "
                                                "0.bias"):
        load_state_dict_strict(model, sd)


def test_load_model_reproduces_the_clients_network(tmp_path):
    client = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    torch.save(client.state_dict(), tmp_path / "client.pt")
    model = load_model(MLP, tmp_path / "client.pt")
    assert not model.training
    x = torch.randn(5, 3)
    with torch.no_grad():
        torch.testing.assert_close(model(x), client(x), rtol=0, atol=0)
    wrong = ModelSpec(arch="mlp", arch_kwargs={"in_features": 3, "hidden": [5], "num_classes": 2})
    with pytest.raises(InvalidCheckpoint, match="shape mismatch"):
        load_model(wrong, tmp_path / "client.pt")


# --- checked against the architecture without allocating it (issue 12) ----------------------


def _mlp_state() -> dict[str, torch.Tensor]:
    return build_model(MLP).state_dict()


@pytest.mark.parametrize("kind", ["safetensors", "torch"])
def test_a_huge_spec_is_refused_without_allocating_its_network(tmp_path, kind):
    """A 285 M-parameter spec against a tiny file: refused from the meta model and the file's
    layout; building it would take over 1 GB."""
    path = tmp_path / "m"
    if kind == "safetensors":
        write_safetensors(_mlp_state(), path)
    else:
        torch.save(_mlp_state(), path)
    huge = ModelSpec(arch="mlp", arch_kwargs={"in_features": 16384, "hidden": [16384],
                                              "num_classes": 1000})
    check_checkpoint(MLP, path)  # warm
    raised = []

    def attempt() -> None:
        with pytest.raises(InvalidCheckpoint, match="shape mismatch") as info:
            check_checkpoint(huge, path)
        raised.append(info.value)

    assert peak_rss_growth(attempt) < 50 * 1024**2
    assert raised[0].details["mismatched"][0]["model_shape"] == [16384, 16384]


def test_check_checkpoint_keeps_safetensors_and_converts_torch_files(tmp_path):
    spec = MLP
    state = _mlp_state()
    write_safetensors(state, tmp_path / "m.safetensors")
    torch.save({"state_dict": state}, tmp_path / "m.pt")
    kept = check_checkpoint(spec, tmp_path / "m.safetensors")
    converted = check_checkpoint(spec, tmp_path / "m.pt")
    assert kept.state_dict is None and kept.num_parameters == 3 * 4 + 4 + 4 * 2 + 2
    _assert_equal_dicts(converted.state_dict, state)
    assert converted.num_parameters == kept.num_parameters


@pytest.mark.parametrize("shape", [[0, 2**40, 2**40], [2**63, 0], [0, 2**62, 4],
                                   [2**64 - 1, 0], [0] + [2**16] * 5])
def test_shapes_that_overflow_64_bits_are_refused(tmp_path, shape):
    """Zero-sized, so the byte count checks out; torch cannot hold the strides (issue 12)."""
    assert not representable(shape, 4)
    _raw_safetensors(tmp_path / "m", {"0.weight": {"dtype": "F32", "shape": shape,
                                                   "data_offsets": [0, 0]}}, b"")
    for read in (read_state_dict, read_layout,
                 lambda p: check_checkpoint(MLP, p)):
        with pytest.raises(InvalidCheckpoint, match="too large to represent"):
            read(tmp_path / "m")


def test_representable_counts_zero_dimensions_as_one():
    assert representable([0, 2**31, 2**31], 1) and representable([], 8)
    assert not representable([0, 2**61, 4], 4) and not representable([-1], 4)


def test_meta_tensors_hold_no_data_and_are_refused(tmp_path):
    state = _mlp_state()
    torch.save({**state, "2.bias": state["2.bias"].to("meta")}, tmp_path / "m.pt")
    with pytest.raises(InvalidCheckpoint, match="meta device"):
        read_state_dict(tmp_path / "m.pt")
    with pytest.raises(InvalidCheckpoint, match="meta device"):
        check_checkpoint(MLP, tmp_path / "m.pt")


def test_expanded_views_are_refused_before_anything_is_computed_from_them(tmp_path):
    state = _mlp_state()
    torch.save({**state, "0.weight": torch.zeros(1).expand(4, 3)}, tmp_path / "small.pt")
    with pytest.raises(InvalidCheckpoint, match="views 48 bytes of a 4-byte storage"):
        check_checkpoint(MLP, tmp_path / "small.pt")
    # 4 TiB claimed by one number: refused without allocating (isfinite would allocate 1 TiB).
    torch.save({"w": torch.zeros(1).expand(2**20, 2**20)}, tmp_path / "huge.pt")
    assert peak_rss_growth(lambda: pytest.raises(InvalidCheckpoint, read_state_dict,
                                              tmp_path / "huge.pt")) < 50 * 1024**2


def test_many_views_of_one_storage_are_refused(tmp_path):
    shared = torch.zeros(2**16)
    torch.save({f"v{i}": shared for i in range(200)}, tmp_path / "m.pt")
    with pytest.raises(InvalidCheckpoint, match="more than 4x the file"):
        read_state_dict(tmp_path / "m.pt")
    torch.save({"a": shared, "tied": shared}, tmp_path / "tied.pt")  # tied weights still load
    assert set(read_state_dict(tmp_path / "tied.pt")) == {"a", "tied"}


def test_non_finite_values_are_found_across_chunk_boundaries(tmp_path, monkeypatch):
    import gif.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "SCAN_CHUNK_BYTES", 64)  # 16 float32 per chunk
    values = torch.zeros(100)
    values[[0, 15, 16, 99]] = torch.tensor([float("nan"), float("inf"), -float("inf"),
                                            float("nan")])
    assert non_finite_count(values) == 4
    assert non_finite_count(values.to(torch.float16)) == 4
    assert non_finite_count(torch.arange(10)) == 0
    write_safetensors({"w": values}, tmp_path / "m.safetensors")
    with pytest.raises(InvalidCheckpoint, match="4 NaN/Inf"):
        checkpoint.check_safetensors_values(tmp_path / "m.safetensors")


def test_a_failure_no_check_foresaw_is_still_a_clear_refusal(tmp_path):
    """Python's zip reader raises NotImplementedError for an unknown zip version (found by the
    fuzz in tests/reliability/test_hostile_files.py); every reader refuses, never crashes."""
    state = _mlp_state()
    torch.save(state, tmp_path / "m.pt")
    data = bytearray((tmp_path / "m.pt").read_bytes())
    central = data.rfind(b"PK\x01\x02")
    data[central + 6] = 160  # "version needed to extract": 16.0
    (tmp_path / "m.pt").write_bytes(bytes(data))
    for read in (read_state_dict, read_layout,
                 lambda p: check_checkpoint(MLP, p)):
        with pytest.raises(InvalidCheckpoint, match="zip|could not be read"):
            read(tmp_path / "m.pt")


def test_write_safetensors_copies_only_tensors_that_share_storage(tmp_path):
    big = torch.randn(256, 1024)  # 1 MiB
    assert peak_rss_growth(lambda: write_safetensors({"a": big, "b": big.clone()},
                                                  tmp_path / "m.safetensors")) < 2 * 1024**2
    back = read_state_dict(tmp_path / "m.safetensors")
    assert torch.equal(back["a"], big)
