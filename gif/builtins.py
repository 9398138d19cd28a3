"""The built-in datasets' ids, names and label names: pure Python (no torch), so the API can
recognise and describe a built-in without loading the engine. ``gif.data`` reads their files.

An id is ``builtin:<name>:<split>`` (``builtin:fashion-mnist:train``); uploads have ``ds_…`` ids."""

from __future__ import annotations

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
