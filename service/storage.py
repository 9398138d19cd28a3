"""Content-addressed artifact store: ``<root>/<sha[:2]>/<sha>``, one file per distinct content.

Writes go to a temporary file under ``<root>/tmp`` (same filesystem, so the final ``rename`` is
atomic), are hashed while they stream in and are capped in size; a crash leaves at most a temp
file, never a partial artifact. The database's ``artifacts`` rows are the index; this class knows
nothing about owners."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

CHUNK_BYTES = 1024 * 1024


class StorageError(Exception):
    """Base class of the store's errors."""


class UploadTooLarge(StorageError):
    """More than ``limit`` bytes were written to a capped staging file (→ HTTP 413)."""

    def __init__(self, limit: int):
        super().__init__(f"upload exceeds the limit of {limit} bytes")
        self.limit = limit


class ArtifactMissing(StorageError):
    """No file for this sha256 in the store."""


class ArtifactCorrupt(StorageError):
    """The stored file no longer hashes to its name (disk corruption or tampering)."""


def _is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


@dataclass
class StagedFile:
    """A file being written into the store: hashed and size-checked on every write."""

    path: Path
    limit: int | None
    _handle: BinaryIO
    _hasher: hashlib._Hash = field(default_factory=hashlib.sha256)
    size: int = 0

    def write(self, data: bytes) -> None:
        """Append ``data``; raises :class:`UploadTooLarge` past the cap (the caller discards)."""
        self.size += len(data)
        if self.limit is not None and self.size > self.limit:
            raise UploadTooLarge(self.limit)
        self._hasher.update(data)
        self._handle.write(data)

    def close(self) -> None:
        """Flush to disk (fsync: the rename must never publish unwritten data)."""
        if not self._handle.closed:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()

    @property
    def sha256(self) -> str:
        return self._hasher.hexdigest()

    def discard(self) -> None:
        """Remove the staging file (safe to call twice)."""
        if not self._handle.closed:
            self._handle.close()
        self.path.unlink(missing_ok=True)


class ArtifactStore:
    """The artifact files under ``root``; see the module docstring for the layout."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        """Where the artifact with this hash lives (whether or not it exists)."""
        if not _is_sha256(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def open(self, sha256: str) -> BinaryIO:
        """Open the artifact for reading; :class:`ArtifactMissing` when absent."""
        try:
            return self.path(sha256).open("rb")
        except FileNotFoundError as err:
            raise ArtifactMissing(f"artifact {sha256} is not in the store") from err

    def stage(self, limit: int | None = None) -> StagedFile:
        """A new staging file (``limit``: the size cap in bytes, None for none)."""
        # Not a context manager: the handle lives inside StagedFile until commit/discard.
        handle = tempfile.NamedTemporaryFile(  # noqa: SIM115
            dir=self.tmp_dir, prefix="upload-", delete=False
        )
        return StagedFile(path=Path(handle.name), limit=limit, _handle=handle)

    def commit(self, staged: StagedFile) -> str:
        """Move a finished staging file into place under its hash, atomically; returns the hash.

        Identical content already stored is kept and the staging file dropped (dedup)."""
        staged.close()
        sha256 = staged.sha256
        target = self.path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            staged.discard()
        else:
            os.replace(staged.path, target)
        return sha256

    def put_file(self, source: Path | str) -> tuple[str, int]:
        """Copy an existing file into the store; returns ``(sha256, size_bytes)``."""
        staged = self.stage()
        try:
            with Path(source).open("rb") as handle:
                while chunk := handle.read(CHUNK_BYTES):
                    staged.write(chunk)
            size = staged.size
            return self.commit(staged), size
        except BaseException:
            staged.discard()
            raise

    def adopt(self, source: Path | str) -> tuple[str, int]:
        """Move a finished file that lies on the store's filesystem (e.g. under ``tmp_dir``)
        into the store without copying it; returns ``(sha256, size_bytes)``."""
        source = Path(source)
        hasher = hashlib.sha256()
        size = 0
        with source.open("rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                hasher.update(chunk)
                size += len(chunk)
        sha256 = hasher.hexdigest()
        target = self.path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            source.unlink()
        else:
            os.replace(source, target)
        return sha256, size

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        """Store ``data``; returns ``(sha256, size_bytes)``."""
        staged = self.stage()
        try:
            staged.write(data)
            return self.commit(staged), len(data)
        except BaseException:
            staged.discard()
            raise

    def verify(self, sha256: str) -> int:
        """Re-hash the stored file; returns its size, or raises :class:`ArtifactCorrupt`."""
        hasher = hashlib.sha256()
        size = 0
        with self.open(sha256) as handle:
            while chunk := handle.read(CHUNK_BYTES):
                hasher.update(chunk)
                size += len(chunk)
        if hasher.hexdigest() != sha256:
            raise ArtifactCorrupt(
                f"artifact {sha256} is corrupt: its content hashes to {hasher.hexdigest()}"
            )
        return size

    def delete(self, sha256: str) -> None:
        """Remove the file (callers first check that no row references it)."""
        self.path(sha256).unlink(missing_ok=True)

    def clean_tmp(self, older_than_s: float = 24 * 3600.0) -> int:
        """Delete staging files left by a crash; returns how many were removed.

        Only files older than ``older_than_s`` go: another process may be writing the young ones."""
        cutoff = time.time() - older_than_s
        removed = 0
        for entry in self.tmp_dir.iterdir():
            if entry.stat().st_mtime >= cutoff:
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        return removed
