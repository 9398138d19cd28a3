"""Dataset metadata: a summary of any :class:`gif.data.ArrayDataset`, and the catalogue of the
built-in datasets present on this server (``builtin:fashion-mnist:train``, …).

A built-in's summary needs its labels, so it is computed once per process, on first use, and
kept by the :class:`BuiltinCatalog` instance the app holds (no module-level state)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DatasetSummary:
    """What the API reports about a dataset and what job validation needs."""

    num_samples: int
    sample_shape: list[int]
    dtype: str
    num_classes: int
    class_counts: list[int]


def _as_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor
        return values.detach().cpu().numpy()
    return np.asarray(values)


def summarize(dataset: Any) -> DatasetSummary:
    """Shape, dtype and label histogram of a dataset with arrays ``x`` (N×…) and ``y`` (N).

    ``num_classes`` is ``max(y) + 1``: labels are class indices, so a class absent from this
    file still counts below the largest one."""
    x = dataset.x
    labels = _as_numpy(dataset.y).astype(np.int64, copy=False).reshape(-1)
    counts = np.bincount(labels) if labels.size else np.zeros(0, dtype=np.int64)
    dtype = str(x.dtype).removeprefix("torch.")
    return DatasetSummary(
        num_samples=int(x.shape[0]),
        sample_shape=[int(d) for d in x.shape[1:]],
        dtype=dtype,
        num_classes=int(counts.shape[0]),
        class_counts=[int(c) for c in counts],
    )


class BuiltinCatalog:
    """Summaries of the built-in datasets whose files are present, computed lazily, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._summaries: dict[str, DatasetSummary] = {}

    def ids(self) -> list[str]:
        """The built-in ids available here, in the engine's order."""
        from gif.data import builtin_dataset_ids

        return list(builtin_dataset_ids())

    def get(self, dataset_id: str) -> DatasetSummary | None:
        """The summary of a present built-in, or None if the id is unknown or absent."""
        if dataset_id not in self.ids():
            return None
        with self._lock:
            if dataset_id not in self._summaries:
                from gif.data import load_builtin

                self._summaries[dataset_id] = summarize(load_builtin(dataset_id))
            return self._summaries[dataset_id]

    def all(self) -> list[tuple[str, DatasetSummary]]:
        found = []
        for dataset_id in self.ids():
            summary = self.get(dataset_id)
            if summary is not None:
                found.append((dataset_id, summary))
        return found
