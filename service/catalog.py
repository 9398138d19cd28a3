"""Dataset metadata: a summary of any :class:`gif.data.ArrayDataset`, and the catalogue of the
built-in datasets present on this server (``builtin:fashion-mnist:train``, …).

A built-in's summary needs its labels, so it is computed once per process, on first use, and
kept by the :class:`BuiltinCatalog` instance the app holds (no module-level state). It is read
without torch (the IDX headers and labels), so the API process never loads the engine for it
(except for CIFAR-10, whose pickled batches only torchvision reads)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DatasetSummary:
    """What the API reports about a dataset and what job validation needs."""

    num_samples: int
    sample_shape: list[int]
    dtype: str
    num_classes: int
    class_counts: list[int]


def summarize(dataset: Any) -> DatasetSummary:
    """The API's view of a :class:`gif.data.ArrayDataset` (its ``summary()``: shape, dtype, and
    the label histogram with ``num_classes = max(y) + 1``)."""
    return DatasetSummary(**dataset.summary())


def _builtin_summary(dataset_id: str) -> DatasetSummary:
    """Read without torch (``gif.builtins.builtin_summary``: IDX headers and labels, digits'
    targets); only CIFAR-10's pickled batches need the engine's reader, and with it torch."""
    from gif.builtins import builtin_summary

    summary = builtin_summary(dataset_id)
    if summary is None:
        from gif.data import load_builtin

        return summarize(load_builtin(dataset_id))
    return DatasetSummary(**summary)


class BuiltinCatalog:
    """Summaries of the built-in datasets whose files are present, computed lazily, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._summaries: dict[str, DatasetSummary] = {}

    def ids(self) -> list[str]:
        """The built-in ids available here, in the engine's order."""
        from gif.builtins import builtin_dataset_ids

        return list(builtin_dataset_ids())

    def get(self, dataset_id: str) -> DatasetSummary | None:
        """The summary of a present built-in, or None if the id is unknown or absent."""
        if dataset_id not in self.ids():
            return None
        with self._lock:
            if dataset_id not in self._summaries:
                self._summaries[dataset_id] = _builtin_summary(dataset_id)
            return self._summaries[dataset_id]

    def unknown(self, dataset_id: str) -> str:
        """Why ``dataset_id`` names no built-in here, listing the ones that do."""
        present = self.ids()
        listed = ", ".join(present) if present else "none on this server"
        return f"unknown built-in dataset {dataset_id!r}; the built-ins here are: {listed}"

    def all(self) -> list[tuple[str, DatasetSummary]]:
        found = []
        for dataset_id in self.ids():
            summary = self.get(dataset_id)
            if summary is not None:
                found.append((dataset_id, summary))
        return found
