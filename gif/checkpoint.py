"""Safe checkpoint IO (api.md ``POST /v1/models``).

An uploaded file is untrusted. It is read as

- **safetensors** (detected by content: an 8-byte little-endian header length followed by
  ``{``), with the header parsed and checked here before any tensor is read, so a header that
  claims more data than the file holds, overlapping or out-of-range offsets, an absurd header
  size, or a shape whose element count, strides or byte size overflow 64 bits (also when a
  zero dimension makes the byte count check out) is refused with a message saying which;
  then safetensors' own reader opens it, as the authority on the format; or
- a **PyTorch zip checkpoint** (what ``torch.save`` writes since 1.6), through
  ``torch.load(path, weights_only=True, map_location="cpu")`` only, after checking the zip's
  declared member sizes (torch stores members uncompressed, so the data read is bounded by the
  file size). Anything that needs arbitrary unpickling is refused; nothing in it executes.
  Tensors must hold data on the CPU (a meta tensor holds none) and view no more bytes than
  their storage has (an expanded, stride-0 view of one number could claim terabytes).

Refused as well: the legacy (pre-1.6, non-zip) PyTorch format, whose loader allocates storages
of whatever size the file declares; bare pickles; non-tensor values; NaN/Inf in floating
tensors; unsupported dtypes. Every refusal is an ``InvalidCheckpoint`` saying what is wrong.

An upload is checked against its architecture without allocating the network
(:func:`check_checkpoint`): the model is built on the meta device and compared, name by name,
with the checkpoint's *layout* (names, shapes, dtypes: a safetensors header, or a torch file
loaded with ``skip_data`` onto the meta device), so a tiny file whose spec asks for a huge
network is refused in milliseconds; a safetensors file's values are then scanned for NaN/Inf
chunk by chunk, never held whole.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import struct
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gif.errors import GifError, InvalidCheckpoint
from gif.registry import build_meta_model, build_model, count_parameters
from gif.spec import ModelSpec

# safetensors itself refuses headers over 100 MB; so do we, and never more than the file holds.
MAX_SAFETENSORS_HEADER = 100_000_000
# Sizes, strides and byte counts of a tensor are signed 64-bit integers in torch.
INT64_MAX = 2**63 - 1
# Tensors of a torch file may share storage (tied weights), so together they may view more
# bytes than the file holds, but not more than this many times as much: more is an expansion.
MAX_VIEWED_BYTES_PER_FILE_BYTE = 4
# Values are scanned (NaN/Inf) in chunks of this many bytes, never a whole file at once.
SCAN_CHUNK_BYTES = 1024 * 1024
# What Python's zip reader raises for a damaged archive (an unknown version is not implemented).
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError,
              NotImplementedError)

logger = logging.getLogger(__name__)


def refuse_unreadable(error: type[GifError], what: str) -> Callable:
    """Decorate a reader of untrusted files: any failure it did not name itself becomes
    ``error`` ("<what> could not be read: ..."), logged with its traceback, so no file can
    reach a 500, whatever a parser underneath raises. Memory errors are not the file's fault
    and pass."""
    def decorate(reader: Callable) -> Callable:
        @functools.wraps(reader)
        def guarded(*args, **kwargs):
            try:
                return reader(*args, **kwargs)
            except (GifError, MemoryError):
                raise
            except Exception as err:
                logger.warning("%s: unforeseen %s from %s", what, type(err).__name__,
                               reader.__name__, exc_info=True)
                raise error(f"{what} could not be read: {type(err).__name__}: "
                            f"{_first_line(err)}") from None
        return guarded
    return decorate

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
SUPPORTED_DTYPES = frozenset(SAFETENSORS_DTYPES.values())

_ZIP_MAGIC = b"PK\x03\x04"
# torch's legacy format starts with the pickled magic number 0x1950a86a20f9469cfc6c.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"


def sniff_format(path: str | os.PathLike) -> str:
    """The file's format by content: ``"safetensors"``, ``"zip"``, ``"torch-legacy"``,
    ``"pickle"`` or ``"unknown"``."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return "torch-legacy"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


# --------------------------------------------------------------------------- safetensors


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"duplicate keys {dup}")
    return dict(pairs)


def read_safetensors_header(
    path: str | os.PathLike, error: type[GifError] = InvalidCheckpoint
) -> tuple[int, dict[str, dict]]:
    """(data start offset, tensor entries) of a safetensors file, every entry checked against
    the real file size: known dtype, non-negative integer shape, offsets that tile the data
    region exactly and match ``numel × itemsize``. Raises ``error`` saying what is wrong."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise error(f"not a safetensors file: {size} bytes, shorter than the 8-byte header")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > MAX_SAFETENSORS_HEADER:
            raise error(f"safetensors header size {header_len:,} bytes is absurd "
                        f"(limit {MAX_SAFETENSORS_HEADER:,})")
        if header_len > size - 8:
            raise error(f"safetensors header claims {header_len:,} bytes but the file holds "
                        f"only {size - 8:,} after the length field (truncated?)")
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as err:
        raise error(f"safetensors header is not valid JSON: {err}") from None
    if not isinstance(header, dict):
        raise error("safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise error("safetensors __metadata__ must map strings to strings")

    data_start = 8 + header_len
    data_len = size - data_start
    spans = []
    for name, entry in header.items():
        spans.append((*_check_safetensors_entry(name, entry, error), name))
    spans.sort()
    cursor = 0
    for begin, end, name in spans:
        if begin != cursor:
            what = "overlaps the previous tensor" if begin < cursor else "leaves a gap before it"
            raise error(f"safetensors tensor {name!r}: data offset {begin} {what}")
        cursor = end
    if cursor > data_len:
        raise error(f"safetensors header claims {cursor:,} data bytes but the file holds only "
                    f"{data_len:,} (truncated?)")
    if cursor < data_len:
        raise error(f"safetensors file has {data_len - cursor:,} trailing bytes after the data")
    return data_start, header


def _check_safetensors_entry(name: str, entry: object, error: type[GifError]) -> tuple[int, int]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise error(f"safetensors tensor {name!r}: entry must have exactly dtype, shape, "
                    f"data_offsets")
    dtype_name, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype_name, str) or dtype_name not in SAFETENSORS_DTYPES:
        raise error(f"tensor {name!r} has unsupported dtype {dtype_name!r} "
                    f"(supported: {', '.join(SAFETENSORS_DTYPES)})")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise error(f"safetensors tensor {name!r}: shape {shape!r} is not a list of sizes >= 0")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(
        isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets
    ) and offsets[0] <= offsets[1]):
        raise error(f"safetensors tensor {name!r}: data_offsets {offsets!r} are not [begin, end]")
    itemsize = SAFETENSORS_DTYPES[dtype_name].itemsize
    if not representable(shape, itemsize):
        raise error(f"safetensors tensor {name!r}: shape {shape} of {dtype_name} is too large "
                    f"to represent (its size or strides overflow 64 bits)")
    expected = math.prod(shape) * itemsize
    if offsets[1] - offsets[0] != expected:
        raise error(f"safetensors tensor {name!r}: shape {shape} of {dtype_name} needs {expected:,}"
                    f" bytes but its offsets span {offsets[1] - offsets[0]:,}")
    return offsets[0], offsets[1]


def representable(shape: list[int] | tuple[int, ...], itemsize: int) -> bool:
    """Whether a tensor of ``shape`` can exist: every size, stride and its byte size fit in a
    signed 64-bit integer. Zero dimensions count as one: ``[0, 2**40, 2**40]`` holds nothing,
    but its strides still overflow."""
    return all(0 <= d <= INT64_MAX for d in shape) and (
        math.prod(max(d, 1) for d in shape) * itemsize <= INT64_MAX
    )


def check_safetensors(
    path: str | os.PathLike, error: type[GifError] = InvalidCheckpoint
) -> tuple[int, dict[str, dict]]:
    """:func:`read_safetensors_header` (the friendly pre-check), then safetensors' own reader
    opens the file, as the authority on the format (offsets, sizes, overflow); returns the
    header's ``(data start, entries)``."""
    from safetensors import SafetensorError, safe_open

    data_start, header = read_safetensors_header(path, error)
    try:
        with safe_open(path, framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise error(f"the safetensors reader refused the file: {_first_line(err)}") from None
    return data_start, header


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def read_safetensors(
    path: str | os.PathLike, error: type[GifError] = InvalidCheckpoint
) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, after :func:`check_safetensors` passed; each tensor
    is read straight into its own buffer (no intermediate copy) from exactly the byte range the
    checked header gives it."""
    data_start, header = check_safetensors(path, error)
    tensors = {}
    with open(path, "rb") as f:
        for name, entry in header.items():
            begin, end = entry["data_offsets"]
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            f.seek(data_start + begin)
            buffer = bytearray(end - begin)
            if f.readinto(buffer) != end - begin:  # the file shrank under us
                raise error(f"safetensors tensor {name!r} is truncated")
            flat = (torch.frombuffer(buffer, dtype=dtype) if buffer
                    else torch.empty(0, dtype=dtype))
            tensors[name] = flat.reshape(entry["shape"])
    return tensors


def safetensors_layout(
    path: str | os.PathLike, error: type[GifError] = InvalidCheckpoint
) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file as meta tensors (names, shapes, dtypes) from its
    checked header alone: no tensor data is read or allocated."""
    _, header = check_safetensors(path, error)
    return {name: torch.empty(entry["shape"], dtype=SAFETENSORS_DTYPES[entry["dtype"]],
                              device="meta")
            for name, entry in header.items()}


def iter_chunks(handle, length: int, itemsize: int = 1, chunk_bytes: int = SCAN_CHUNK_BYTES):
    """``length`` bytes from ``handle``'s position, as bytearrays of at most ``chunk_bytes``
    (a multiple of ``itemsize``); ``EOFError`` if the file ends first."""
    step = max(itemsize, chunk_bytes - chunk_bytes % itemsize)
    remaining = length
    while remaining > 0:
        buffer = bytearray(min(step, remaining))
        view = memoryview(buffer)
        filled = 0
        while filled < len(buffer):
            got = handle.readinto(view[filled:])
            if not got:
                raise EOFError(f"the data ends {remaining - filled:,} bytes early")
            filled += got
        remaining -= len(buffer)
        yield buffer


def count_non_finite(chunks, dtype: torch.dtype) -> int:
    """NaN/Inf values in raw little-endian ``chunks`` of ``dtype`` (0 for non-float dtypes)."""
    if not dtype.is_floating_point:
        return 0
    bad = 0
    for chunk in chunks:
        if chunk:
            bad += int((~torch.isfinite(torch.frombuffer(chunk, dtype=dtype))).sum())
    return bad


def non_finite_count(tensor: torch.Tensor) -> int:
    """NaN/Inf values in a floating ``tensor``, counted a chunk at a time (``torch.isfinite``
    of a whole tensor makes float temporaries of its size)."""
    if not tensor.is_floating_point():
        return 0
    flat = tensor.detach().reshape(-1)
    step = max(SCAN_CHUNK_BYTES // flat.element_size(), 1)
    return sum(int((~torch.isfinite(flat[i : i + step])).sum())
               for i in range(0, flat.numel(), step))


def check_safetensors_values(
    path: str | os.PathLike, error: type[GifError] = InvalidCheckpoint
) -> None:
    """Refuse NaN/Inf in any floating tensor of a safetensors file, reading it chunk by chunk
    (memory ``SCAN_CHUNK_BYTES``, whatever the file's size)."""
    data_start, header = check_safetensors(path, error)
    with open(path, "rb") as f:
        for name, entry in header.items():
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            begin, end = entry["data_offsets"]
            f.seek(data_start + begin)
            try:
                bad = count_non_finite(iter_chunks(f, end - begin, dtype.itemsize), dtype)
            except EOFError:
                raise error(f"safetensors tensor {name!r} is truncated") from None
            if bad:
                raise error(f"tensor {name!r} has {bad} NaN/Inf value(s) out of "
                            f"{math.prod(entry['shape'])}")


# --------------------------------------------------------------------------- torch zip


def _check_torch_zip(path: str | os.PathLike) -> None:
    """Bound what torch.load will read: members must be stored (torch never compresses) and
    their declared sizes fit in the file."""
    size = os.path.getsize(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except ZIP_ERRORS as err:
        raise InvalidCheckpoint(f"corrupt or truncated PyTorch checkpoint (zip): {err}") from None
    declared = 0
    for info in members:
        if info.compress_type != zipfile.ZIP_STORED:
            raise InvalidCheckpoint(
                f"zip member {info.filename!r} is compressed; torch.save writes uncompressed "
                f"members, so this is not a PyTorch checkpoint"
            )
        declared += info.file_size
    if declared > size:
        raise InvalidCheckpoint(
            f"zip members declare {declared:,} bytes but the file holds only {size:,}"
        )
    if not any(info.filename.endswith("data.pkl") for info in members):
        raise InvalidCheckpoint("zip file has no data.pkl: not a PyTorch checkpoint")


def _refused_global(message: str) -> str:
    found = re.search(r"GLOBAL\s+([\w.]+)", message) or re.search(
        r"[Uu]nsupported (?:global|class)[:\s]+([\w.]+)", message)
    return f" ({found.group(1)})" if found else ""


def _torch_load(path: str | os.PathLike, *, layout_only: bool = False) -> object:
    """``torch.load(weights_only=True)`` of a checked zip; ``layout_only``: onto the meta
    device without reading any storage (``torch.serialization.skip_data``)."""
    _check_torch_zip(path)
    try:
        # A file object, not the path: torch.load dispatches on the file *name* otherwise
        # (a ".safetensors" name is handed to the safetensors reader), and we sniff content.
        with open(path, "rb") as f:
            if layout_only:
                with torch.serialization.skip_data():
                    return torch.load(f, weights_only=True, map_location="meta")
            return torch.load(f, weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - every torch.load failure becomes a clear 422
        message = str(err)
        if "Weights only load failed" in message or "Unsupported" in message:
            raise InvalidCheckpoint(
                "refused: needs unpickling of arbitrary objects" + _refused_global(message)
                + "; upload safetensors or a plain state dict of tensors"
            ) from None
        raise InvalidCheckpoint(
            f"corrupt or truncated PyTorch checkpoint: {_first_line(err)}"
        ) from None


# --------------------------------------------------------------------------- public API


def _tensor_mapping(obj: object) -> dict[str, torch.Tensor]:
    """A plain ``{name: Tensor}`` dict (unwrapping ``{"state_dict": {...}}``), every value a
    dense tensor of a supported dtype; its values are not looked at."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise InvalidCheckpoint(
            f"checkpoint holds a {type(obj).__name__}, not a state dict (a mapping of names "
            f"to tensors, or {{'state_dict': ...}})"
        )
    if not obj:
        raise InvalidCheckpoint("checkpoint holds an empty state dict")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise InvalidCheckpoint(f"state dict key {key!r} is a {type(key).__name__}, "
                                    f"not a string")
        if not isinstance(value, torch.Tensor):
            raise InvalidCheckpoint(f"value of {key!r} is a {type(value).__name__}, not a tensor")
        if value.layout != torch.strided:
            raise InvalidCheckpoint(f"tensor {key!r} has layout {value.layout}; only dense "
                                    f"tensors are supported")
        if value.dtype not in SUPPORTED_DTYPES:
            raise InvalidCheckpoint(
                f"tensor {key!r} has unsupported dtype {value.dtype} "
                f"(supported: {', '.join(sorted(str(d) for d in SUPPORTED_DTYPES))})"
            )
        out[key] = value.detach()
    return out


def _viewed_bytes(key: str, value: torch.Tensor) -> int:
    """The bytes ``value`` spans; refused when they are more than its storage holds."""
    if value.device.type != "cpu":
        raise InvalidCheckpoint(f"tensor {key!r} is on the {value.device.type} device and "
                                f"holds no data here; save CPU tensors")
    nbytes = value.numel() * value.element_size()
    available = value.untyped_storage().nbytes() - value.storage_offset() * value.element_size()
    if nbytes > available:
        raise InvalidCheckpoint(f"tensor {key!r} of shape {list(value.shape)} views {nbytes:,} "
                                f"bytes of a {available:,}-byte storage (an expanded or "
                                f"overlapping view); save it with .contiguous()")
    return nbytes


def validate_state_dict(
    obj: object, *, max_viewed_bytes: int | None = None
) -> dict[str, torch.Tensor]:
    """A plain ``{name: Tensor}`` dict (unwrapping ``{"state_dict": {...}}``), every value a
    dense CPU tensor of a supported dtype with no NaN/Inf, viewing no more than its storage
    (and, all together, at most ``max_viewed_bytes``); ``InvalidCheckpoint`` otherwise. Each
    value is checked before anything is computed from it, so no check allocates what a
    hostile view claims."""
    tensors = _tensor_mapping(obj)
    viewed = sum(_viewed_bytes(key, value) for key, value in tensors.items())
    if max_viewed_bytes is not None and viewed > max_viewed_bytes:
        raise InvalidCheckpoint(f"the checkpoint's tensors view {viewed:,} bytes, more than "
                                f"{MAX_VIEWED_BYTES_PER_FILE_BYTE}x the file: refused")
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        bad = non_finite_count(value)
        if bad:
            raise InvalidCheckpoint(f"tensor {key!r} has {bad} NaN/Inf value(s) "
                                    f"out of {value.numel()}")
        out[key] = value.contiguous()
    return out


def _checked_kind(path: str | os.PathLike) -> str:
    """``"safetensors"`` or ``"zip"``; every other format refused with the reason."""
    if not os.path.isfile(path):
        raise InvalidCheckpoint(f"checkpoint file {os.fspath(path)!r} does not exist")
    kind = sniff_format(path)
    if kind in ("safetensors", "zip"):
        return kind
    if kind == "torch-legacy":
        raise InvalidCheckpoint(
            "legacy PyTorch format (before 1.6) is not accepted: its loader trusts sizes "
            "declared in the file; re-save with torch.save (zip format) or as safetensors"
        )
    if kind == "pickle":
        raise InvalidCheckpoint(
            "refused: needs unpickling of arbitrary objects (a bare pickle, not a PyTorch "
            "checkpoint); upload safetensors or a torch.save state dict"
        )
    raise InvalidCheckpoint(
        "unrecognised checkpoint format: expected safetensors or a PyTorch zip checkpoint"
    )


@refuse_unreadable(InvalidCheckpoint, "the checkpoint")
def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in a safetensors or PyTorch (zip) file, safely (see module docstring)."""
    if _checked_kind(path) == "safetensors":
        return validate_state_dict(read_safetensors(path, InvalidCheckpoint))
    limit = MAX_VIEWED_BYTES_PER_FILE_BYTE * os.path.getsize(path)
    return validate_state_dict(_torch_load(path), max_viewed_bytes=limit)


@refuse_unreadable(InvalidCheckpoint, "the checkpoint")
def read_layout(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors as meta tensors (names, shapes, dtypes), without reading or
    allocating any tensor data: a safetensors header, or a torch file loaded onto the meta
    device with ``skip_data``."""
    if _checked_kind(path) == "safetensors":
        return safetensors_layout(path, InvalidCheckpoint)
    return _tensor_mapping(_torch_load(path, layout_only=True))


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def _listing(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict_fits(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Refuse a state dict that would not load strictly into ``model``: the error names
    missing, unexpected and mis-shaped keys (with both shapes) and integer tensors for floating
    parameters, in ``details`` and, up to ten of each, in the message. Only names, shapes and
    dtypes are read, so ``model`` and ``state_dict`` may be meta tensors (nothing allocated)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        {"key": k, "checkpoint_shape": _shape(state_dict[k]), "model_shape": _shape(v)}
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    wrong_kind = [
        k for k, v in expected.items()
        if k in state_dict and v.is_floating_point() and not state_dict[k].is_floating_point()
    ]
    if missing or unexpected or mismatched or wrong_kind:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listing(unexpected)}")
        if mismatched:
            shown = [f"{m['key']} (checkpoint {m['checkpoint_shape']}, model "
                     f"{m['model_shape']})" for m in mismatched]
            parts.append(f"shape mismatch: {_listing(shown)}")
        if wrong_kind:
            parts.append(f"integer/bool tensors for floating parameters: {_listing(wrong_kind)}")
        raise InvalidCheckpoint(
            "checkpoint does not fit the architecture: " + "; ".join(parts),
            details={"missing": missing, "unexpected": unexpected, "mismatched": mismatched,
                     "wrong_dtype": wrong_kind},
        )


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load every key strictly, after :func:`check_state_dict_fits`."""
    check_state_dict_fits(model, state_dict)
    model.load_state_dict(dict(state_dict), strict=True)
    return model


def write_safetensors(
    state_dict: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write contiguous CPU copies atomically (temp file in the same directory, then rename),
    so a reader never sees a half-written file."""
    from safetensors.torch import save_file

    target = Path(path)
    # safetensors refuses tensors that share storage (tied weights): clone those (only those,
    # so writing costs no copy of the whole state dict).
    tensors = {}
    storages: set[int] = set()
    for key, value in state_dict.items():
        value = value.detach().to("cpu").contiguous()
        storage = value.untyped_storage().data_ptr()
        if storage in storages and value.numel():
            value = value.clone()
        storages.add(value.untyped_storage().data_ptr())
        tensors[key] = value
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=dict(metadata) if metadata else None)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


@dataclass(frozen=True)
class CheckedCheckpoint:
    """An upload that fits its architecture. ``state_dict`` is what to store as safetensors;
    None when the file is safetensors already and is stored as it is."""

    num_parameters: int
    state_dict: dict[str, torch.Tensor] | None


@refuse_unreadable(InvalidCheckpoint, "the checkpoint")
def check_checkpoint(spec: ModelSpec, path: str | os.PathLike) -> CheckedCheckpoint:
    """Check an uploaded checkpoint against ``spec`` without allocating the network: the model
    is built on the meta device, compared with the file's layout (:func:`read_layout`: names,
    shapes, dtype kinds: :func:`check_state_dict_fits`), and only a file that fits is
    read — safetensors values scanned for NaN/Inf chunk by chunk, a torch file loaded (its
    size is bounded by the upload's). ``InvalidRequest`` for the spec, ``InvalidCheckpoint``
    for the file."""
    meta_model = build_meta_model(spec)
    check_state_dict_fits(meta_model, read_layout(path))
    if _checked_kind(path) == "safetensors":
        check_safetensors_values(path, InvalidCheckpoint)
        state_dict = None
    else:
        state_dict = read_state_dict(path)
    return CheckedCheckpoint(num_parameters=count_parameters(meta_model), state_dict=state_dict)


def load_model(spec: ModelSpec, path: str | os.PathLike) -> nn.Module:
    """``build_model(spec)`` with the checkpoint at ``path`` loaded strictly, in eval mode;
    the file is compared with the meta model before the network is allocated."""
    state_dict = read_state_dict(path)
    check_state_dict_fits(build_meta_model(spec), state_dict)
    model = build_model(spec)
    load_state_dict_strict(model, state_dict)
    return model.eval()
