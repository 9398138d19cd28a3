"""Model downloads: into a temporary file that becomes the destination only if its sha256
matches, resumed with ``Range`` after a broken connection (docs/api.md, Downloads)."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import IO

import httpx

from service.client.calls import _Call, _parse_nothing
from service.client.errors import IntegrityError


def _etag_digest(response: httpx.Response) -> str | None:
    etag = response.headers.get("etag")
    if not etag:
        return None
    return etag.removeprefix("W/").strip('"').lower()


class _Download:
    """A download into a temporary file next to ``dest`` that becomes ``dest`` only if its
    sha256 matches; after a broken connection it resumes with ``Range`` (docs/api.md, Downloads)."""

    def __init__(self, dest: Path, expected_sha256: str | None):
        self.dest = dest
        self.expected = expected_sha256.lower() if expected_sha256 else None
        self._etag: str | None = None
        # Not mkstemp: its 0600 mode would stick to the renamed file; "x" still never clobbers.
        self._path = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.part"
        self._file: IO[bytes] = open(self._path, "xb")  # noqa: SIM115 - closed by commit/discard
        self._hash = hashlib.sha256()
        self._received = 0

    def request_headers(self) -> dict[str, str]:
        headers = {"Accept": "application/octet-stream"}
        if self._received and self._etag:
            headers["Range"] = f"bytes={self._received}-"
            headers["If-Range"] = f'"{self._etag}"'
        return headers

    def begin(self, response: httpx.Response) -> None:
        """Start (or, on 206, continue) writing; a full 200 answer starts over."""
        if response.status_code != 206:
            self._file.seek(0)
            self._file.truncate()
            self._hash = hashlib.sha256()
            self._received = 0
        self._etag = _etag_digest(response) or self._etag

    def write(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self._file.write(chunk)
        self._received += len(chunk)

    def commit(self) -> Path:
        """Rename into place if every known expected digest matches, else delete and raise."""
        self._file.close()
        actual = self._hash.hexdigest()
        for digest in (self.expected, self._etag):
            if digest is not None and digest != actual:
                self.discard()
                raise IntegrityError(
                    f"sha256 mismatch for {self.dest.name}: expected {digest}, got {actual}; "
                    "nothing was written"
                )
        os.replace(self._path, self.dest)
        return self.dest

    def discard(self) -> None:
        self._file.close()
        self._path.unlink(missing_ok=True)


_DOWNLOAD = _Call("GET", "", _parse_nothing)  # how retries treat a download: an idempotent GET


def _download_target(dest: str | os.PathLike[str], model_id: str) -> Path:
    """``dest`` itself, or ``dest/<id>.safetensors`` when it is an existing directory."""
    path = Path(dest)
    return path / f"{model_id}.safetensors" if path.is_dir() else path


