"""First start of the embedded install: an owner ``local`` and its key, written to
``settings.api_key_file`` (mode 0600) so the operator can read it; later starts reuse it."""

from __future__ import annotations

import os
from pathlib import Path

from service.auth import authenticate, create_key
from service.db.session import engine_from_settings, make_session_factory, session_scope
from service.settings import Settings

LOCAL_OWNER = "local"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only, created with that mode (no
    window in which another user can read it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")
    os.replace(tmp, path)


def ensure_local_key(settings: Settings) -> tuple[str, Path, bool]:
    """Return ``(key, path, created)``: the key in ``api_key_file`` if it still authenticates,
    else a new key for owner ``local`` written there (``created`` True).

    Needs a migrated database."""
    assert settings.api_key_file is not None
    path = Path(settings.api_key_file)
    engine = engine_from_settings(settings)
    try:
        factory = make_session_factory(engine)
        with session_scope(factory) as session:
            if path.is_file():
                existing = path.read_text().strip()
                if authenticate(session, existing) is not None:
                    return existing, path, False
            key = create_key(session, LOCAL_OWNER)
        _write_private(path, key)
        return key, path, True
    finally:
        engine.dispose()
