"""Content-addressed artifact store: ``<root>/<sha[:2]>/<sha>``, one file per distinct content.

Writes go to a temporary file under ``<root>/tmp`` (same filesystem, so the final ``rename`` is
atomic), are hashed while they stream in and are capped in size; a crash leaves at most a temp
file, never a partial artifact. The database's ``artifacts`` rows are the index; this class knows
nothing about owners. Which files may go is decided by counting those rows
(``service.erasure``), never here.

A staging file is held with an exclusive ``flock`` by the process writing it, from
:meth:`ArtifactStore.stage` until it is discarded: the lock dies with the process, so
:meth:`ArtifactStore.clean_tmp` at start-up removes exactly the staging files of dead uploads,
whatever their age, and never one another live process is writing.

A full disk is :class:`InsufficientStorage` (HTTP 507). The store also keeps ``min_free_bytes``
free: an upload that would eat into it is refused, so the database on the same disk can still
record the deletions that free space."""

from __future__ import annotations

import errno
import fcntl
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


class InsufficientStorage(StorageError):
    """The disk is full, or writing more would eat into the reserved headroom (→ HTTP 507)."""


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# How the databases say "disk full": SQLite's message, PostgreSQL's SQLSTATE 53100 (disk_full).
_DISK_FULL_MESSAGES = ("database or disk is full", "no space left on device")


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) means the disk is full: ENOSPC or
    EDQUOT, :class:`InsufficientStorage`, SQLite's "database or disk is full", PostgreSQL's
    ``disk_full``."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, InsufficientStorage):
            return True
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        if getattr(exc, "sqlstate", None) == "53100" or getattr(exc, "pgcode", None) == "53100":
            return True
        if any(text in str(exc).lower() for text in _DISK_FULL_MESSAGES):
            return True
        exc = getattr(exc, "orig", None) or exc.__cause__ or exc.__context__
        seen += 1
    return False


def _insufficient(exc: OSError | None = None) -> InsufficientStorage:
    detail = f" ({exc.strerror})" if exc is not None and exc.strerror else ""
    return InsufficientStorage(f"the server's storage is full{detail}: delete models, datasets "
                               "or jobs you no longer need, or ask the operator for space")


class ContentGone(StorageError):
    """A file just written was removed by a concurrent erasure of identical bytes before its
    row was indexed (→ 503: send the upload again)."""


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
    _lock_fd: int | None = None  # the flock that marks this file as live (see module doc)
    min_free_bytes: int = 0
    _hasher: hashlib._Hash = field(default_factory=hashlib.sha256)
    size: int = 0

    def write(self, data: bytes) -> None:
        """Append ``data``; raises :class:`UploadTooLarge` past the cap and
        :class:`InsufficientStorage` on a full disk or past the headroom (the caller
        discards)."""
        self.size += len(data)
        if self.limit is not None and self.size > self.limit:
            raise UploadTooLarge(self.limit)
        if self.min_free_bytes and free_bytes(self.path.parent) - len(data) < self.min_free_bytes:
            raise _insufficient()
        self._hasher.update(data)
        try:
            self._handle.write(data)
        except OSError as err:
            if err.errno in DISK_FULL_ERRNOS:
                raise _insufficient(err) from err
            raise

    def close(self) -> None:
        """Flush to disk (fsync: the rename must never publish unwritten data)."""
        if not self._handle.closed:
            try:
                self._handle.flush()
                os.fsync(self._handle.fileno())
            except OSError as err:
                if err.errno in DISK_FULL_ERRNOS:
                    raise _insufficient(err) from err
                raise
            finally:
                self._handle.close()

    @property
    def sha256(self) -> str:
        return self._hasher.hexdigest()

    def discard(self) -> None:
        """Remove the staging file and drop its lock (safe to call twice)."""
        if not self._handle.closed:
            self._handle.close()
        self.path.unlink(missing_ok=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def free_bytes(path: Path | str) -> int:
    """Bytes available to this process on the filesystem holding ``path``."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive non-blocking flock on ``path``, or None when another open
    file holds one (a live writer)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


class ArtifactStore:
    """The artifact files under ``root``; see the module docstring for the layout."""

    def __init__(self, root: Path | str, *, min_free_bytes: int = 0):
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.min_free_bytes = min_free_bytes

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
        """A new staging file, locked as live (``limit``: the size cap in bytes, None for
        none); :class:`InsufficientStorage` when the disk is already past the headroom."""
        if self.min_free_bytes and free_bytes(self.tmp_dir) < self.min_free_bytes:
            raise _insufficient()
        try:
            # Not a context manager: the handle lives inside StagedFile until commit/discard.
            handle = tempfile.NamedTemporaryFile(  # noqa: SIM115
                dir=self.tmp_dir, prefix="upload-", delete=False
            )
        except OSError as err:
            if err.errno in DISK_FULL_ERRNOS:
                raise _insufficient(err) from err
            raise
        lock_fd = _try_lock(Path(handle.name))
        return StagedFile(path=Path(handle.name), limit=limit, _handle=handle,
                          _lock_fd=lock_fd, min_free_bytes=self.min_free_bytes)

    def commit(self, staged: StagedFile) -> str:
        """Move a finished staging file into place under its hash, atomically; returns the hash.

        Identical content already stored is kept and the staging file dropped (dedup)."""
        staged.close()
        sha256 = staged.sha256
        target = self.path(sha256)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            if err.errno in DISK_FULL_ERRNOS:
                raise _insufficient(err) from err
            raise
        if target.exists():
            staged.discard()
        else:
            os.replace(staged.path, target)
            staged.discard()  # the path is gone: this only drops the staging lock
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

    def delete(self, sha256: str) -> bool:
        """Remove the file; True if there was one. Only ``service.erasure`` calls it, after
        counting that no live row references the hash."""
        try:
            self.path(sha256).unlink()
        except FileNotFoundError:
            return False
        return True

    def stored_hashes(self, older_than_s: float = 0.0) -> list[str]:
        """The hashes of the files in the store (``older_than_s``: only files not modified
        for that long), for the sweep of files no row references."""
        cutoff = time.time() - older_than_s
        found = []
        for shard in self.root.iterdir():
            if shard == self.tmp_dir or not shard.is_dir():
                continue
            for entry in shard.iterdir():
                if _is_sha256(entry.name) and entry.stat().st_mtime <= cutoff:
                    found.append(entry.name)
        return found

    def clean_tmp(self) -> int:
        """Delete the staging files of dead uploads (no live process holds their lock), of
        any age; returns how many were removed. Run at start-up."""
        removed = 0
        for entry in self.tmp_dir.iterdir():
            fd = _try_lock(entry)
            if fd is None:
                continue  # a live writer (or a file that vanished meanwhile)
            try:
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed += 1
            finally:
                os.close(fd)
        return removed
