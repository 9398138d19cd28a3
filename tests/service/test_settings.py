"""Settings: every path derives from GIF_DATA_DIR, the runner resolves from the broker, and a
visibility timeout that would let the broker redeliver running jobs is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings


@pytest.fixture
def clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("GIF_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_defaults_derive_from_data_dir(clean_env, tmp_path):
    clean_env.setenv("GIF_DATA_DIR", str(tmp_path))
    settings = Settings()
    assert settings.database_url == f"sqlite:///{tmp_path.as_posix()}/gif.db"
    assert settings.artifacts_dir == tmp_path / "artifacts"
    assert settings.api_key_file == tmp_path / "api_key"
    assert settings.broker_url is None and settings.effective_runner == "local"
    assert settings.max_upload_bytes == 1024**3
    assert settings.job_time_limit_s == 6 * 3600
    assert settings.broker_visibility_timeout_s == settings.job_time_limit_s + 3600


def test_environment_overrides_and_runner_resolution(clean_env):
    clean_env.setenv("GIF_BROKER_URL", "redis://127.0.0.1:6379/0")
    clean_env.setenv("GIF_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1/gif")
    clean_env.setenv("GIF_MAX_UPLOAD_BYTES", "1234")
    settings = Settings()
    assert settings.effective_runner == "celery"
    assert settings.database_url.startswith("postgresql")
    assert settings.max_upload_bytes == 1234
    assert Settings(runner="none").effective_runner == "none"
    assert Settings(data_dir=Path("x"), runner="local").effective_runner == "local"


def test_visibility_timeout_must_exceed_the_time_limit(clean_env):
    with pytest.raises(ValidationError, match="must exceed"):
        Settings(job_time_limit_s=100, broker_visibility_timeout_s=100)
    assert Settings(job_time_limit_s=100, broker_visibility_timeout_s=101)
    with pytest.raises(ValidationError, match="broker_url"):
        Settings(runner="celery")
    with pytest.raises(ValidationError):
        Settings(max_upload_bytes=0)
