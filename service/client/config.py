"""Where the client finds the service and its key (first found wins): the ``url`` /
``api_key`` arguments, the ``GIF_URL`` / ``GIF_API_KEY`` environment variables, then the key
file the embedded server writes (``$GIF_DATA_DIR/api_key``, default ``./data/api_key``) and
``http://127.0.0.1:8000``."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from service.client.errors import GifClientError

DEFAULT_URL = "http://127.0.0.1:8000"



def resolve_url(url: str | None = None) -> str:
    """The base URL: the argument, else ``$GIF_URL``, else the embedded default's address."""
    return (url or os.environ.get("GIF_URL") or DEFAULT_URL).rstrip("/")


def default_key_file() -> Path:
    """Where the embedded server writes its generated key: ``$GIF_DATA_DIR/api_key``."""
    return Path(os.environ.get("GIF_DATA_DIR") or "./data") / "api_key"


def resolve_api_key(api_key: str | None = None) -> str:
    """The API key: the argument, else ``$GIF_API_KEY``, else the embedded server's key file."""
    if api_key:
        return api_key
    if os.environ.get("GIF_API_KEY"):
        return os.environ["GIF_API_KEY"]
    key_file = default_key_file()
    with contextlib.suppress(OSError):
        key = key_file.read_text(encoding="utf-8").strip()
        if key:
            return key
    raise GifClientError(
        "no API key: pass api_key= (or --api-key), set GIF_API_KEY, or start the embedded "
        f"server, which writes one to {key_file} (GIF_DATA_DIR)"
    )


