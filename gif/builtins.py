"""The built-in datasets' ids, names, label names, files and summaries: no torch, so the API can
recognise, list and describe a built-in without loading the engine (``builtin_summary`` reads
only the IDX headers and the labels). ``gif.data`` loads their arrays for the engine.

An id is ``builtin:<name>:<split>`` (``builtin:fashion-mnist:train``); uploads have ``ds_…`` ids."""

from __future__ import annotations

import collections
import gzip
import importlib.util
import math
import os
import struct
from pathlib import Path

from gif.errors import InvalidDataset

BUILTIN_PREFIX = "builtin:"
BUILTIN_NAMES = ("fashion-mnist", "digits", "mnist", "cifar10")
SPLITS = ("train", "test")

_DIGIT_NAMES = tuple(str(digit) for digit in range(10))
# What each label of a built-in dataset means (label i is name i); uploads carry no names.
BUILTIN_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"),
    "digits": _DIGIT_NAMES,
    "mnist": _DIGIT_NAMES,
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"),
}


def is_builtin(dataset_id: object) -> bool:
    """Whether ``dataset_id`` names a built-in (by its prefix; it may still be unknown)."""
    return isinstance(dataset_id, str) and dataset_id.startswith(BUILTIN_PREFIX)


def builtin_id(name: str, split: str) -> str:
    return f"{BUILTIN_PREFIX}{name}:{split}"


def parse_builtin_id(dataset_id: str) -> tuple[str, str] | None:
    """``(name, split)`` of a well-formed built-in id, else None."""
    parts = dataset_id.split(":") if is_builtin(dataset_id) else []
    if len(parts) != 3 or parts[1] not in BUILTIN_NAMES or parts[2] not in SPLITS:
        return None
    return parts[1], parts[2]


def builtin_class_names(dataset_id: str) -> list[str] | None:
    """The class names of a ``builtin:<name>:<split>`` id; None for anything else (uploads)."""
    parts = dataset_id.split(":") if is_builtin(dataset_id) else []
    if len(parts) != 3:
        return None
    names = BUILTIN_CLASS_NAMES.get(parts[1])
    return list(names) if names is not None else None


# --------------------------------------------------------------------------- files

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
DIGITS_SPLIT_SEED = 0
DIGITS_TRAIN_FRACTION = 0.8


def fashion_dir() -> Path:
    return Path(os.environ.get("GIF_FASHION_MNIST_DIR") or DEFAULT_FASHION_MNIST_DIR)


def fashion_files(split: str) -> tuple[Path, Path]:
    prefix = "train" if split == "train" else "t10k"
    folder = fashion_dir()
    return (folder / f"{prefix}-images-idx3-ubyte.gz", folder / f"{prefix}-labels-idx1-ubyte.gz")


def torchvision_root() -> Path | None:
    root = os.environ.get("GIF_TORCHVISION_ROOT")
    return Path(root) if root else None


def mnist_files(split: str) -> list[Path]:
    """All four raw files: torchvision's MNIST opens either split only when all are present."""
    root = torchvision_root()
    if root is None:
        return []
    return [root / "MNIST" / "raw" / f"{prefix}-{kind}-idx{dims}-ubyte"
            for prefix in ("train", "t10k") for kind, dims in (("images", 3), ("labels", 1))]


def mnist_split_files(split: str) -> tuple[Path, Path]:
    """The images and labels IDX files of one MNIST split (``mnist_files`` must be present)."""
    prefix = "train" if split == "train" else "t10k"
    raw = Path(str(torchvision_root())) / "MNIST" / "raw"
    return raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"


def cifar10_files(split: str) -> list[Path]:
    root = torchvision_root()
    if root is None:
        return []
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    return [root / "cifar-10-batches-py" / n for n in names]


def _present(files: list[Path]) -> bool:
    return bool(files) and all(f.is_file() for f in files)


def has_sklearn_digits() -> bool:
    # find_spec, not import: importing scikit-learn takes seconds and listing must stay cheap.
    return importlib.util.find_spec("sklearn") is not None


def builtin_available(name: str, split: str) -> bool:
    """Whether the files of built-in ``name``'s ``split`` are on this machine."""
    if name == "fashion-mnist":
        return _present(list(fashion_files(split)))
    if name == "digits":
        return has_sklearn_digits()
    if name == "mnist":
        return _present(mnist_files(split))
    if name == "cifar10":
        return _present(cifar10_files(split))
    return False


def builtin_dataset_ids() -> list[str]:
    """Ids of the built-in datasets whose files are present on this machine."""
    return [builtin_id(name, split) for name in BUILTIN_NAMES for split in SPLITS
            if builtin_available(name, split)]


def builtin_source(name: str) -> str:
    """Where built-in ``name`` is read from (part of a cache key; named in errors)."""
    return {"fashion-mnist": str(fashion_dir()), "digits": "scikit-learn"}.get(
        name, f"GIF_TORCHVISION_ROOT={torchvision_root()}")


def digits_split_indices(num_samples: int) -> dict[str, object]:
    """The documented digits split: seeded permutation, first 80 % train (sorted), rest test."""
    import numpy as np

    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(num_samples)
    cut = math.floor(DIGITS_TRAIN_FRACTION * num_samples)
    return {"train": np.sort(order[:cut]), "test": np.sort(order[cut:])}


# --------------------------------------------------------------------------- IDX

def read_idx_bytes(path: str | os.PathLike, *, max_elements: int = 2**31,
                   header_only: bool = False) -> tuple[tuple[int, ...], bytes]:
    """The dimensions and (unless ``header_only``) the values of an IDX file of unsigned bytes
    (``.gz`` or plain), e.g. MNIST/Fashion-MNIST's; ``InvalidDataset`` when it is not one or
    holds another number of values than its header declares."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] != 0x08:
                raise InvalidDataset(f"{path}: not an unsigned-byte IDX file")
            ndim = head[3]
            dims = tuple(struct.unpack(f">{ndim}I", f.read(4 * ndim)))
            count = math.prod(dims)
            if count > max_elements:
                raise InvalidDataset(f"{path}: IDX dimensions {dims} exceed {max_elements:,}")
            if header_only:
                return dims, b""
            data = f.read(count + 1)
    except (OSError, EOFError, struct.error) as err:
        raise InvalidDataset(f"{path}: corrupt IDX file: {err}") from None
    if len(data) != count:
        raise InvalidDataset(f"{path}: IDX header declares {count:,} values but the file holds "
                             f"{len(data):,}" + ("+" if len(data) > count else ""))
    return dims, data


# --------------------------------------------------------------------------- summaries

def label_summary(labels: list[int]) -> dict[str, object]:
    """``num_classes = max(label) + 1`` and the label histogram (api.md's dataset object)."""
    counts = collections.Counter(labels)
    num_classes = max(counts) + 1 if counts else 0
    return {"num_classes": num_classes,
            "class_counts": [counts.get(label, 0) for label in range(num_classes)]}


def _idx_summary(dataset_id: str, images: Path, labels: Path) -> dict[str, object]:
    image_dims, _ = read_idx_bytes(images, header_only=True)
    label_dims, values = read_idx_bytes(labels)
    if len(image_dims) != 3 or len(label_dims) != 1 or image_dims[0] != label_dims[0]:
        raise InvalidDataset(f"{dataset_id}: unexpected IDX shapes {list(image_dims)}, "
                             f"{list(label_dims)}")
    return {"num_samples": image_dims[0], "sample_shape": [1, *image_dims[1:]],
            "dtype": "uint8", **label_summary(list(values))}


def _digits_summary(split: str) -> dict[str, object]:
    from sklearn.datasets import load_digits

    target = load_digits().target
    labels = target[digits_split_indices(len(target))[split]]
    return {"num_samples": len(labels), "sample_shape": [1, 8, 8], "dtype": "uint8",
            **label_summary([int(label) for label in labels])}


def builtin_summary(dataset_id: str) -> dict[str, object] | None:
    """The summary (``num_samples``, ``sample_shape``, ``dtype``, ``num_classes``,
    ``class_counts``) of a present built-in, read without torch: the IDX headers and labels, or
    scikit-learn's digits targets. None for ``cifar10``, whose batches are pickles: only the
    engine (torchvision) reads them. ``InvalidDataset`` when unknown, absent or unreadable."""
    parsed = parse_builtin_id(dataset_id)
    if parsed is None or not builtin_available(*parsed):
        raise InvalidDataset(f"built-in dataset {dataset_id!r} is not available on this server")
    name, split = parsed
    if name == "fashion-mnist":
        return _idx_summary(dataset_id, *fashion_files(split))
    if name == "mnist":
        return _idx_summary(dataset_id, *mnist_split_files(split))
    if name == "digits":
        return _digits_summary(split)
    return None
