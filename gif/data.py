"""Datasets: upload formats, built-ins, preprocessing (api.md ``POST /v1/datasets``, models.md).

Uploads hold arrays ``x`` (``N×C×H×W``, ``N×H×W`` — read as ``N×1×H×W`` — or ``N×F``; uint8 or
float32) and ``y`` (``N`` integer labels) in

- ``.npz``, read with ``allow_pickle=False``, after every zip member's declared size and
  compression ratio and the ``.npy`` headers of ``x``/``y`` were checked against caps (a zip
  bomb or a header claiming more than its member holds is refused before anything is
  allocated; Python's zip reader never inflates a member past its declared size); or
- safetensors (its header checked as for checkpoints, see ``gif.checkpoint``).

The format is detected by content, not by name. :func:`scan_dataset` checks an upload and
returns its summary while the arrays stream through in chunks (memory: one chunk plus the
label histogram, whatever the file's size); :func:`read_dataset` loads it whole (the worker).
Both apply the same rules (``_check_x``, ``_check_y``, ``_check_label_range``).

Built-ins (ids ``builtin:<name>:<split>``, split ``train`` or ``test``):

- ``fashion-mnist``: the IDX files of Debian's ``dataset-fashion-mnist`` in
  ``/usr/share/datasets/fashion-mnist/`` (env ``GIF_FASHION_MNIST_DIR`` overrides); uint8
  ``N×1×28×28``.
- ``digits``: scikit-learn's ``load_digits()`` (1,797 8×8 images, values 0..16) as uint8
  ``N×1×8×8``. Split: ``numpy.random.default_rng(0).permutation(1797)``; its first
  ``floor(0.8·1797) = 1437`` indices (sorted) are ``train``, the other 360 ``test``.
- ``mnist`` and ``cifar10``: read by torchvision (``download=False``) from the directory in env
  ``GIF_TORCHVISION_ROOT``, only when their files are there (uint8 ``N×1×28×28`` / ``N×3×32×32``).

``load_builtin`` caches per process (the arrays are shared: never modify them in place).
``gif.builtins.builtin_class_names(dataset_id)`` says what each built-in's labels mean
(figures, reports).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gif.builtins import (
    BUILTIN_NAMES,
    SPLITS,
    builtin_available,
    builtin_id,
    builtin_source,
    digits_split_indices,
    fashion_files,
    is_builtin,
    parse_builtin_id,
    read_idx_bytes,
    torchvision_root,
)
from gif.checkpoint import (
    SAFETENSORS_DTYPES,
    ZIP_ERRORS,
    check_safetensors,
    iter_chunks,
    non_finite_count,
    read_safetensors,
    refuse_unreadable,
    sniff_format,
)
from gif.errors import InvalidDataset, InvalidRequest
from gif.fit import ModelIO, check_channels, check_labels, check_sample_shape
from gif.registry import build_meta_model, get_architecture
from gif.request import MAX_LABEL
from gif.spec import InputSpec, ModelSpec

# Bounds for uploads. A dataset bigger than this is refused, not half-read.
MAX_DATASET_BYTES = 4 * 1024**3
# Deflate compresses real images by a small factor; a member inflating far more is a bomb.
MAX_COMPRESSION_RATIO = 250
_RATIO_EXEMPT_BYTES = 1024**2  # small members (e.g. all-zero labels) may compress extremely
# MAX_LABEL (gif.request): class_counts has max_label + 1 entries; keep it bounded.
_NPY_MAX_HEADER = 10_000



# --------------------------------------------------------------------------- ArrayDataset


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """Labelled samples in memory: ``x`` uint8/float32 ``N×C×H×W`` or ``N×F``, ``y`` int64 ``N``.

    Construction validates everything (``InvalidDataset`` naming the problem)."""

    x: torch.Tensor
    y: torch.Tensor
    name: str = "dataset"

    def __post_init__(self) -> None:
        _validate_arrays(self.x, self.y, self.name)

    @property
    def num_samples(self) -> int:
        return int(self.x.shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x.shape[1:])

    @property
    def dtype(self) -> str:
        return str(self.x.dtype).removeprefix("torch.")

    @property
    def num_classes(self) -> int:
        """``max(y) + 1``: labels are class indices, absent classes below the maximum count."""
        return int(self.y.max()) + 1

    @property
    def class_counts(self) -> list[int]:
        return torch.bincount(self.y, minlength=self.num_classes).tolist()

    def __len__(self) -> int:
        return self.num_samples

    def subset(self, indices: Sequence[int] | torch.Tensor,
               name: str | None = None) -> ArrayDataset:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ArrayDataset(self.x[idx], self.y[idx], name or self.name)

    def summary(self) -> dict:
        """JSON-able description (the fields of api.md's dataset object)."""
        return {"num_samples": self.num_samples, "sample_shape": list(self.sample_shape),
                "dtype": self.dtype, "num_classes": self.num_classes,
                "class_counts": self.class_counts}


def _check_x(name: str, dtype: str, shape: Sequence[int]) -> tuple[int, ...]:
    """The rules for ``x`` (dtype name, shape as the file holds it): uint8 or float32;
    ``N×F``, ``N×H×W`` or ``N×C×H×W``; samples present, none empty. Returns the per-sample
    shape (``N×H×W`` read as one channel)."""
    if dtype not in ("uint8", "float32"):
        raise InvalidDataset(f"{name}: x has dtype {dtype}; expected uint8 or float32 (convert "
                             f"with x.astype(np.float32) or np.uint8)")
    if len(shape) not in (2, 3, 4):
        raise InvalidDataset(f"{name}: x has shape {list(shape)}; expected N×F, N×H×W or "
                             f"N×C×H×W")
    if shape[0] == 0:
        raise InvalidDataset(f"{name}: the dataset has no samples")
    sample = tuple(int(d) for d in shape[1:])
    if any(d == 0 for d in sample):
        raise InvalidDataset(f"{name}: samples have an empty dimension {list(sample)}")
    return (1, *sample) if len(shape) == 3 else sample


def _check_y(name: str, dtype: str, integer: bool, shape: Sequence[int], n: int) -> None:
    """The rules for ``y``: integer labels, one per sample."""
    if not integer:
        raise InvalidDataset(f"{name}: y has dtype {dtype}; labels must be integers")
    if len(shape) != 1:
        raise InvalidDataset(f"{name}: y has shape {list(shape)}; expected a 1-D array of N "
                             f"labels")
    if shape[0] != n:
        raise InvalidDataset(f"{name}: x has {n} samples but y has {shape[0]} labels")


def _check_label_range(name: str, low: int, high: int, negatives: int) -> None:
    if low < 0:
        raise InvalidDataset(f"{name}: labels must be >= 0; found {low} ({negatives} negative)")
    if high > MAX_LABEL:
        raise InvalidDataset(f"{name}: label {high} is larger than the limit {MAX_LABEL}")


def _check_finite(name: str, bad: int) -> None:
    if bad:
        raise InvalidDataset(f"{name}: x has {bad} NaN/Inf value(s)")


def _validate_arrays(x: object, y: object, name: str) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise InvalidDataset(f"{name}: x and y must be tensors")
    if x.ndim == 3:
        raise InvalidDataset(f"{name}: x has shape {list(x.shape)}; expected N×F or N×C×H×W")
    _check_x(name, _dtype_name(x.dtype), x.shape)
    if y.dtype != torch.int64 or y.ndim != 1:
        raise InvalidDataset(f"{name}: y must be a 1-D int64 tensor, got {_dtype_name(y.dtype)} "
                             f"of shape {list(y.shape)}")
    _check_y(name, "int64", True, y.shape, x.shape[0])
    _check_label_range(name, int(y.min()), int(y.max()), int((y < 0).sum()))
    _check_finite(name, non_finite_count(x))


def _dtype_name(dtype: torch.dtype | np.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _as_dataset(x: torch.Tensor, y: torch.Tensor, name: str) -> ArrayDataset:
    """Normalise what a file holds: ``N×H×W`` images get a channel axis, integer labels int64."""
    sample = _check_x(name, _dtype_name(x.dtype), x.shape)
    integer = not (y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool)
    _check_y(name, _dtype_name(y.dtype), integer, y.shape, x.shape[0])
    return ArrayDataset(x.reshape(x.shape[0], *sample).contiguous(), y.to(torch.int64), name)


# --------------------------------------------------------------------------- uploads


def _check_zip_members(path: Path, max_bytes: int) -> dict[str, zipfile.ZipInfo]:
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except ZIP_ERRORS as err:
        raise InvalidDataset(f"corrupt or truncated .npz file: {err}") from None
    total = 0
    for info in members:
        if info.file_size > max_bytes:
            raise InvalidDataset(f".npz member {info.filename!r} declares {info.file_size:,} "
                                 f"bytes, more than the limit {max_bytes:,}")
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > _RATIO_EXEMPT_BYTES and ratio > MAX_COMPRESSION_RATIO:
            raise InvalidDataset(f".npz member {info.filename!r} inflates {ratio:.0f}× (limit "
                                 f"{MAX_COMPRESSION_RATIO}×): refused as a likely zip bomb")
        total += info.file_size
    if total > max_bytes:
        raise InvalidDataset(f".npz members declare {total:,} bytes in all, more than the limit "
                             f"{max_bytes:,}")
    return {info.filename: info for info in members}


def _read_npy_header(f, info: zipfile.ZipInfo, key: str) -> tuple[np.dtype, tuple[int, ...]]:
    """The ``.npy`` header of one open member (``f`` left at the data): no object dtype, and a
    shape that the member holds."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f, _NPY_MAX_HEADER)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f, _NPY_MAX_HEADER)
    except ZIP_ERRORS as err:
        raise InvalidDataset(f".npz array {key!r} has a malformed .npy header: {err}") from None
    header_bytes = f.tell() if f.seekable() else None
    if dtype.hasobject:
        raise InvalidDataset(f".npz array {key!r} is an object array: refused (read with "
                             f"allow_pickle=False; store numbers only)")
    needed = math.prod(shape) * dtype.itemsize
    available = info.file_size - (header_bytes or 0)
    if needed > available:
        raise InvalidDataset(f".npz array {key!r} claims shape {list(shape)} of {dtype} "
                             f"({needed:,} bytes) but its member holds {available:,}")
    return dtype, tuple(shape)


def _check_npy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str) -> None:
    with archive.open(info) as f:
        _read_npy_header(f, info, key)


def _npz_members(path: Path, name: str, max_bytes: int) -> dict[str, zipfile.ZipInfo]:
    """The ``x.npy`` and ``y.npy`` members, after the whole archive passed the zip checks."""
    members = _check_zip_members(path, max_bytes)
    found = {}
    for key in ("x", "y"):
        info = members.get(f"{key}.npy")
        if info is None:
            present = sorted(m.removesuffix(".npy") for m in members)
            raise InvalidDataset(f"{name}: missing array {key!r} (found: {present})")
        found[key] = info
    return found


def _read_npz(path: Path, name: str, max_bytes: int) -> ArrayDataset:
    members = _npz_members(path, name, max_bytes)
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        for key, info in members.items():
            _check_npy_member(archive, info, key)
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in ("x", "y"):
                arrays[key] = npz[key]
    except ValueError as err:  # e.g. "Object arrays cannot be loaded when allow_pickle=False"
        raise InvalidDataset(f"{name}: {err}") from None
    except ZIP_ERRORS as err:
        raise InvalidDataset(f"{name}: corrupt .npz: {err}") from None
    x, y = arrays["x"], arrays["y"]
    _check_x(name, _numpy_x_dtype(x.dtype), x.shape)
    x = x.astype(np.float32 if x.dtype.kind == "f" else np.uint8, copy=False)  # native order
    _check_y(name, str(y.dtype), y.dtype.kind in "iu", y.shape, x.shape[0])
    if y.size and y.dtype.kind == "u" and y.dtype.itemsize == 8 and int(y.max()) > MAX_LABEL:
        raise InvalidDataset(f"{name}: label {int(y.max())} is larger than the limit {MAX_LABEL}")
    y = y.astype(np.int64, copy=False)
    return _as_dataset(torch.from_numpy(np.ascontiguousarray(x)),
                       torch.from_numpy(np.ascontiguousarray(y)), name)


def _read_safetensors_dataset(path: Path, name: str) -> ArrayDataset:
    tensors = read_safetensors(path, InvalidDataset)
    for key in ("x", "y"):
        if key not in tensors:
            raise InvalidDataset(f"{name}: missing tensor {key!r} (found: {sorted(tensors)})")
    return _as_dataset(tensors["x"], tensors["y"], name)


def _dataset_kind(path: Path, name: str, max_bytes: int) -> str:
    """``"zip"`` (.npz) or ``"safetensors"``; a missing, too large or other file refused."""
    if not path.is_file():
        raise InvalidDataset(f"dataset file {str(path)!r} does not exist")
    if path.stat().st_size > max_bytes:
        raise InvalidDataset(f"{name}: file of {path.stat().st_size:,} bytes exceeds the limit "
                             f"{max_bytes:,}")
    kind = sniff_format(path)
    if kind not in ("zip", "safetensors"):
        raise InvalidDataset(f"{name}: unrecognised dataset format: expected .npz (numpy.savez) "
                             f"or safetensors with arrays 'x' and 'y'")
    return kind


@refuse_unreadable(InvalidDataset, "the dataset")
def read_dataset(path: str | os.PathLike, name: str | None = None, *,
                 max_bytes: int = MAX_DATASET_BYTES) -> ArrayDataset:
    """An uploaded dataset (``.npz`` or safetensors, by content); ``InvalidDataset`` if it is
    malformed, unsafe, too large, or its arrays break the rules of the module docstring."""
    path = Path(path)
    name = name or path.name
    if _dataset_kind(path, name, max_bytes) == "zip":
        return _read_npz(path, name, max_bytes)
    return _read_safetensors_dataset(path, name)


# --------------------------------------------------------------------------- uploads, streamed


def _numpy_x_dtype(dtype: np.dtype) -> str:
    """``uint8`` / ``float32`` for any byte order, else numpy's name (refused by _check_x)."""
    if dtype.kind == "f" and dtype.itemsize == 4:
        return "float32"
    if dtype.kind == "u" and dtype.itemsize == 1:
        return "uint8"
    return str(dtype)


# numpy views of the safetensors dtypes a dataset may hold (BF16 has none: never valid data).
_SAFETENSORS_NUMPY = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
                      "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


class _LabelScan:
    """Range checks and the histogram of labels fed in chunks (``MAX_LABEL`` bounds it)."""

    def __init__(self, name: str):
        self.name = name
        self.counts = np.zeros(0, dtype=np.int64)

    def add(self, labels: np.ndarray) -> None:
        if not labels.size:
            return
        low, high = int(labels.min()), int(labels.max())
        _check_label_range(self.name, low, high, int((labels < 0).sum()) if low < 0 else 0)
        counts = np.bincount(labels.astype(np.int64, copy=False), minlength=len(self.counts))
        counts[: len(self.counts)] += self.counts
        self.counts = counts


def _scan_arrays(name: str, handle, x_dtype: np.dtype, x_shape: Sequence[int],
                 open_labels: Callable, y_dtype: np.dtype, y_shape: Sequence[int]) -> dict:
    """The summary of ``x`` (read from ``handle``'s position) and ``y`` (``open_labels()``: a
    context manager giving a handle at the labels), every rule checked before the data is
    read, then chunk by chunk."""
    sample = _check_x(name, _numpy_x_dtype(x_dtype), x_shape)
    n = int(x_shape[0])
    _check_y(name, str(y_dtype), y_dtype.kind in "iu", y_shape, n)
    x_bytes = math.prod(x_shape) * x_dtype.itemsize
    try:
        if x_dtype.kind == "f":
            bad = 0
            for chunk in iter_chunks(handle, x_bytes, x_dtype.itemsize):
                bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(chunk, x_dtype))))
            _check_finite(name, bad)
        labels = _LabelScan(name)
        y_bytes = math.prod(y_shape) * y_dtype.itemsize
        with open_labels() as y_handle:
            for chunk in iter_chunks(y_handle, y_bytes, y_dtype.itemsize):
                labels.add(np.frombuffer(chunk, y_dtype))
    except EOFError as err:
        raise InvalidDataset(f"{name}: truncated: {err}") from None
    counts = labels.counts
    return {"num_samples": n, "sample_shape": list(sample),
            "dtype": _numpy_x_dtype(x_dtype), "num_classes": len(counts),
            "class_counts": counts.tolist()}


def _scan_npz(path: Path, name: str, max_bytes: int) -> dict:
    members = _npz_members(path, name, max_bytes)
    with zipfile.ZipFile(path) as archive:
        with archive.open(members["y"]) as f:
            y_dtype, y_shape = _read_npy_header(f, members["y"], "y")
            y_offset = f.tell()

        @contextlib.contextmanager
        def open_labels():
            with archive.open(members["y"]) as labels:
                labels.seek(y_offset)
                yield labels

        with archive.open(members["x"]) as f:
            x_dtype, x_shape = _read_npy_header(f, members["x"], "x")
            return _scan_arrays(name, f, x_dtype, x_shape, open_labels, y_dtype, y_shape)


def _scan_safetensors(path: Path, name: str) -> dict:
    data_start, header = check_safetensors(path, InvalidDataset)
    for key in ("x", "y"):
        if key not in header:
            raise InvalidDataset(f"{name}: missing tensor {key!r} (found: {sorted(header)})")
    x, y = header["x"], header["y"]
    for key, entry in (("x", x), ("y", y)):
        if entry["dtype"] not in _SAFETENSORS_NUMPY:  # BF16: refused by the rules
            torch_name = _dtype_name(SAFETENSORS_DTYPES[entry["dtype"]])
            if key == "x":
                _check_x(name, torch_name, entry["shape"])
            _check_y(name, torch_name, False, entry["shape"], 0)
    x_dtype, y_dtype = (np.dtype(_SAFETENSORS_NUMPY[e["dtype"]]) for e in (x, y))

    @contextlib.contextmanager
    def open_labels():
        with open(path, "rb") as labels:
            labels.seek(data_start + y["data_offsets"][0])
            yield labels

    with open(path, "rb") as f:
        f.seek(data_start + x["data_offsets"][0])
        return _scan_arrays(name, f, x_dtype, x["shape"], open_labels, y_dtype, y["shape"])


@refuse_unreadable(InvalidDataset, "the dataset")
def scan_dataset(path: str | os.PathLike, name: str | None = None, *,
                 max_bytes: int = MAX_DATASET_BYTES) -> dict:
    """Check an uploaded dataset file by every rule :func:`read_dataset` applies and return
    its summary (the fields of :meth:`ArrayDataset.summary`), reading the arrays in chunks:
    memory is one chunk plus the label histogram, whatever the file's size."""
    path = Path(path)
    name = name or path.name
    try:
        if _dataset_kind(path, name, max_bytes) == "zip":
            return _scan_npz(path, name, max_bytes)
        return _scan_safetensors(path, name)
    except ZIP_ERRORS as err:
        raise InvalidDataset(f"{name}: corrupt file: {err}") from None


# --------------------------------------------------------------------------- built-ins


def read_idx(path: str | os.PathLike, *, max_elements: int = 2**31) -> torch.Tensor:
    """An IDX file (``.gz`` or plain) of unsigned bytes, e.g. MNIST/Fashion-MNIST's, as uint8
    (the format's reader is ``gif.builtins.read_idx_bytes``)."""
    dims, data = read_idx_bytes(path, max_elements=max_elements)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(dims)


def _load_fashion(split: str, dataset_id: str) -> ArrayDataset:
    images, labels = fashion_files(split)
    x = read_idx(images)
    y = read_idx(labels)
    if x.ndim != 3 or y.ndim != 1:
        raise InvalidDataset(f"{dataset_id}: unexpected IDX shapes {list(x.shape)}, "
                             f"{list(y.shape)}")
    return ArrayDataset(x.unsqueeze(1).contiguous(), y.to(torch.int64), dataset_id)


def _load_digits(split: str, dataset_id: str) -> ArrayDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    idx = digits_split_indices(len(bunch.target))[split]
    images = bunch.images[idx].astype(np.uint8)[:, None]  # values are integers 0..16
    labels = bunch.target[idx].astype(np.int64)
    return ArrayDataset(torch.from_numpy(np.ascontiguousarray(images)),
                        torch.from_numpy(labels), dataset_id)


def _load_torchvision(name: str, split: str, dataset_id: str) -> ArrayDataset:
    from torchvision import datasets

    root = str(torchvision_root())
    try:
        if name == "mnist":
            ds = datasets.MNIST(root, train=split == "train", download=False)
            x = ds.data.unsqueeze(1)
            y = torch.as_tensor(ds.targets, dtype=torch.int64)
        else:
            ds = datasets.CIFAR10(root, train=split == "train", download=False)
            x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2)
            y = torch.as_tensor(ds.targets, dtype=torch.int64)
    except (RuntimeError, OSError, ValueError) as err:
        raise InvalidDataset(f"{dataset_id}: cannot read from {root}: {err}") from None
    return ArrayDataset(x.contiguous(), y, dataset_id)


def _parse_builtin_id(dataset_id: str) -> tuple[str, str]:
    parsed = parse_builtin_id(dataset_id)
    if parsed is None:
        known = ", ".join(builtin_id(n, s) for n in BUILTIN_NAMES for s in SPLITS)
        raise InvalidDataset(f"unknown built-in dataset {dataset_id!r} (known: {known})")
    return parsed


@functools.lru_cache(maxsize=8)
def _load_builtin_cached(dataset_id: str, source: str) -> ArrayDataset:
    # ``source`` (the directory read) is part of the key, so changing the env var is honoured.
    name, split = _parse_builtin_id(dataset_id)
    if name == "fashion-mnist":
        return _load_fashion(split, dataset_id)
    if name == "digits":
        return _load_digits(split, dataset_id)
    return _load_torchvision(name, split, dataset_id)


def load_builtin(dataset_id: str) -> ArrayDataset:
    """A built-in dataset by id, cached per process; ``InvalidDataset`` when unknown or absent."""
    name, split = _parse_builtin_id(dataset_id)
    if not builtin_available(name, split):
        raise InvalidDataset(f"built-in dataset {dataset_id!r} is not available on this server "
                             f"(files not found: {builtin_source(name)})")
    return _load_builtin_cached(dataset_id, builtin_source(name))


def load_dataset(id_or_path: str | os.PathLike) -> ArrayDataset:
    """``builtin:…`` ids through :func:`load_builtin`, anything else as an uploaded file."""
    if is_builtin(id_or_path):
        return load_builtin(id_or_path)
    return read_dataset(id_or_path)


# --------------------------------------------------------------------------- preprocessing


def prepare_inputs(x: torch.Tensor, input_spec: InputSpec, flat: bool) -> torch.Tensor:
    """Raw values → the model's float32 input: ``x · scale``, then ``(x − mean) / std`` per
    channel (axis 1; one value broadcasts to all), then ``N×…`` → ``N×F`` for flat models.
    Never modifies ``x``."""
    out = x.to(torch.float32) * input_spec.scale
    if input_spec.mean is not None and input_spec.std is not None:
        channels = out.shape[1] if out.ndim >= 2 else 1
        if len(input_spec.mean) not in (1, channels):
            raise InvalidRequest(
                f"input normalisation has {len(input_spec.mean)} mean/std values but the "
                f"samples have {channels} channels", loc=("spec", "input", "mean"))
        view = (1, -1) + (1,) * (out.ndim - 2)
        mean = torch.tensor(input_spec.mean, dtype=torch.float32, device=out.device).view(view)
        std = torch.tensor(input_spec.std, dtype=torch.float32, device=out.device).view(view)
        out = (out - mean) / std
    if flat:  # explicit width: reshape(0, -1) is ambiguous for an empty set (no split)
        out = out.reshape(out.shape[0], math.prod(out.shape[1:]))
    return out.contiguous()


def check_dataset_fits(spec: ModelSpec, ds: ArrayDataset, *,
                       loc: tuple[str | int, ...] = ("train_dataset_id",)) -> None:
    """``InvalidRequest`` (at ``loc``) when ``ds``'s samples cannot feed ``spec``'s model or its
    labels exceed the model's outputs. Shapes come from the architecture; the output count from a
    forward pass on the meta device (no memory, no compute)."""
    arch = get_architecture(spec.arch)
    kwargs = arch.resolve_kwargs(spec.arch_kwargs)
    expected = arch.shape_of(kwargs) if arch.shape_of is not None else None
    io = ModelIO(arch.name, expected, arch.flat_input, None)
    sample = ds.sample_shape
    check_sample_shape(io, sample, ds.name, loc)
    check_channels(spec.input.mean, sample, ds.name, loc)
    outputs = _meta_num_outputs(spec, (math.prod(sample),) if arch.flat_input else sample, loc)
    check_labels(outputs, ds.num_classes, ds.name, loc)


def _meta_num_outputs(spec: ModelSpec, shape: tuple[int, ...],
                      loc: tuple[str | int, ...]) -> int | None:
    model = build_meta_model(spec).eval()
    try:
        with torch.no_grad():
            out = model(torch.empty((1, *shape), device="meta"))
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InvalidRequest(f"samples of shape {list(shape)} do not fit {spec.arch}: {first}",
                             loc=loc) from None
    except NotImplementedError:  # an op without a meta kernel: the shape check above stands
        return None
    return int(out.shape[-1]) if isinstance(out, torch.Tensor) and out.ndim == 2 else None
