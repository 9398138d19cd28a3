"""Errors the engine raises. Each carries a stable ``code`` that the service puts in a failed
job's ``error.code`` (api.md) or maps to a 4xx, so no caller has to parse messages."""

from __future__ import annotations


class GifError(Exception):
    """Base class: ``code`` is machine-readable, ``str(err)`` is for people."""

    code = "gif_error"

    def __init__(self, message: str, *, details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}


class InvalidCheckpoint(GifError):
    """A checkpoint that cannot be read safely or does not fit its architecture."""

    code = "invalid_checkpoint"


class InvalidDataset(GifError):
    """A dataset file that is malformed, unsafe, or does not fit the model."""

    code = "invalid_dataset"


class InvalidRequest(GifError):
    """An edit request that cannot run (class out of range, indices out of range, ...).

    ``loc`` names the offending field as a path, e.g. ``("edit", "class")``."""

    code = "invalid_request"

    def __init__(
        self, message: str, *, loc: tuple[str | int, ...] = (), details: dict | None = None
    ):
        super().__init__(message, details=details)
        self.loc = loc


class UnknownArchitecture(InvalidRequest):
    code = "unknown_architecture"


class SolverDiverged(GifError):
    """The iterative solver's residual grew without bound (or the series could not converge)."""

    code = "solver_diverged"


class NonFinite(GifError):
    """A NaN or Inf appeared in gradients, the solution, or the edited weights."""

    code = "non_finite"


class Cancelled(GifError):
    """The caller asked to stop; raised between solver iterations / phases."""

    code = "cancelled"
