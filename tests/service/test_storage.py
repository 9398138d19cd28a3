"""The content-addressed store: hashing, dedup, atomic commit, the size cap, integrity."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from service.storage import ArtifactCorrupt, ArtifactMissing, ArtifactStore, UploadTooLarge


def test_put_bytes_is_content_addressed_and_deduplicated(tmp_path):
    store = ArtifactStore(tmp_path)
    data = b"hello artifacts" * 1000
    sha, size = store.put_bytes(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert size == len(data)
    assert store.path(sha) == tmp_path / sha[:2] / sha
    assert store.path(sha).read_bytes() == data
    assert store.put_bytes(data) == (sha, size)
    assert list(store.tmp_dir.iterdir()) == []


def test_put_file_copies_and_hashes(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * 9000)  # several chunks
    sha, size = store.put_file(source)
    assert sha == hashlib.sha256(source.read_bytes()).hexdigest()
    assert size == source.stat().st_size
    assert store.verify(sha) == size


def test_staging_past_the_cap_raises_and_discard_leaves_nothing(tmp_path):
    store = ArtifactStore(tmp_path)
    staged = store.stage(limit=10)
    staged.write(b"12345")
    with pytest.raises(UploadTooLarge):
        staged.write(b"678901")
    staged.discard()
    assert list(store.tmp_dir.iterdir()) == []
    assert [p for p in tmp_path.iterdir() if p.name != "tmp"] == []


def test_verify_detects_corruption(tmp_path):
    store = ArtifactStore(tmp_path)
    sha, _ = store.put_bytes(b"original content")
    store.path(sha).write_bytes(b"tampered content")
    with pytest.raises(ArtifactCorrupt):
        store.verify(sha)


def test_missing_artifact_and_bad_hash_are_errors(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(ArtifactMissing):
        store.open("0" * 64)
    with pytest.raises(ValueError):
        store.path("../../etc/passwd")


def test_clean_tmp_removes_the_staging_files_of_dead_uploads_of_any_age(tmp_path):
    """A live upload's staging file (locked by its writer) stays, however old; the file of
    an upload whose process died (here: a real child process killed mid-upload) goes at
    once, however young."""
    import subprocess
    import sys

    store = ArtifactStore(tmp_path)
    live = store.stage()
    live.write(b"in progress")
    os.utime(live.path, (0, 0))
    child = (
        "import os, sys; from service.storage import ArtifactStore;"
        "s = ArtifactStore(sys.argv[1]).stage(); s.write(b'half an upload');"
        "s._handle.flush(); print(s.path, flush=True); os._exit(9)"
    )
    out = subprocess.run([sys.executable, "-c", child, str(tmp_path)], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": os.getcwd()})
    dead = Path(out.stdout.strip())
    assert out.returncode == 9 and dead.exists(), out.stderr
    assert store.clean_tmp() == 1
    assert live.path.exists() and not dead.exists()
    live.discard()
    assert store.clean_tmp() == 0


def test_adopt_moves_a_file_into_place(tmp_path):
    store = ArtifactStore(tmp_path)
    source = store.tmp_dir / "finished.bin"
    source.write_bytes(b"already written")
    sha, size = store.adopt(source)
    assert (sha, size) == (hashlib.sha256(b"already written").hexdigest(), 15)
    assert not source.exists() and store.path(sha).read_bytes() == b"already written"
    again = store.tmp_dir / "again.bin"
    again.write_bytes(b"already written")
    assert store.adopt(again) == (sha, size) and not again.exists()
