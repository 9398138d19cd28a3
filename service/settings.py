"""Service configuration, read from ``GIF_*`` environment variables (pydantic-settings).

Every path default derives from ``data_dir``, so one variable moves the whole state of an
embedded install. Unset values are resolved once, in :meth:`Settings._derive_defaults`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

GIB = 1024**3


class Settings(BaseSettings):
    """All knobs of the API process and its workers (env prefix ``GIF_``)."""

    model_config = SettingsConfigDict(env_prefix="GIF_", extra="ignore")

    data_dir: Path = Field(
        Path("./data"), description="Root of the service's state. Default: ./data"
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL. Default: the SQLite file <data_dir>/gif.db. "
        "PostgreSQL: postgresql+psycopg://user@host/db",
    )
    database_pool_size: int = Field(
        20, ge=1, le=1000,
        description="Database connections each process keeps open for reuse (as many more "
        "are opened under a burst, and closed after use). Default: 20",
    )
    artifacts_dir: Path | None = Field(
        None, description="Content-addressed file store. Default: <data_dir>/artifacts"
    )
    broker_url: str | None = Field(
        None,
        description="Celery broker (e.g. redis://host:6379/0). Default: None, the embedded "
        "local runner executes jobs inside the API process.",
    )
    runner: Literal["auto", "local", "celery", "none"] = Field(
        "auto",
        description="Who runs jobs. Default auto: celery when broker_url is set, else local. "
        "none: API only, jobs stay queued (tests, or workers started elsewhere).",
    )
    max_upload_bytes: int = Field(
        GIB, gt=0, description="Upload size cap in bytes; larger uploads get 413. Default: 1 GiB"
    )
    job_time_limit_s: float = Field(
        6 * 3600.0, gt=0, description="Hard wall-clock limit of one job. Default: 6 h"
    )
    broker_visibility_timeout_s: float | None = Field(
        None,
        gt=0,
        description="Seconds before the broker redelivers an unacknowledged job; must exceed "
        "job_time_limit_s so a long job is never run twice. Default: job_time_limit_s + 1 h",
    )
    job_queue: str = Field(
        "gif-jobs",
        min_length=1,
        max_length=200,
        description="Broker queue of job messages; the API and its workers must agree. Several "
        "deployments can share one Redis with distinct names. Default: gif-jobs",
    )
    heartbeat_interval_s: float = Field(
        10.0, gt=0, description="How often a running job refreshes heartbeat_at. Default: 10 s"
    )
    requeue_unsent_after_s: float = Field(
        30.0,
        gt=0,
        description="Celery mode: a queued job whose message was never sent (the API died "
        "between saving and sending it) is sent by the reaper once it is this old. Default: 30 s",
    )
    min_free_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="Free space the artifact store keeps on its disk: an upload that would eat "
        "into it is refused with 507, so the database can still record the deletions that free "
        "space. Default: 64 MiB",
    )
    retention_job_s: float | None = Field(
        None,
        gt=0,
        description="Erase terminal jobs (request, events, metrics, figures) this many seconds "
        "after they finished, with an erasure record (reason retention). Default: None, kept",
    )
    retention_upload_s: float | None = Field(
        None,
        gt=0,
        description="Erase models and datasets (uploaded or produced by a job) that no job has "
        "used for this many seconds, and none queued or running uses. Default: None, kept",
    )
    retention_interval_s: float = Field(
        3600.0, gt=0, description="How often the retention sweep runs. Default: 1 h"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level of the service loggers. Default: info"
    )
    api_key_file: Path | None = Field(
        None,
        description="Where the embedded install writes its first API key (mode 0600). "
        "Default: <data_dir>/api_key",
    )

    # --- limits per owner (docs/api.md Limits; service/limits.py): past one, 429 with Retry-After
    max_queued_jobs_per_owner: int | None = Field(
        1000, ge=1,
        description="Queued jobs an owner may have at once; a submission past it is 429. "
        "None: no limit. Default: 1000",
    )
    max_stored_bytes_per_owner: int | None = Field(
        None, ge=1,
        description="Bytes of models and datasets an owner may store (uploads and edited "
        "models, deleted ones not counted); an upload past it is 429. None: no limit (the "
        "disk is). Default: None",
    )
    rate_limit_per_minute: int | None = Field(
        None, ge=1,
        description="Authenticated requests per owner per minute (a token bucket holding a "
        "minute's worth); past it, 429. Shared by every API process through the broker's "
        "Redis when GIF_BROKER_URL is a Redis URL (not applied while that Redis is "
        "unreachable), else counted per process. None: no limit. Default: None",
    )
    limit_retry_after_s: int = Field(
        30, ge=1, le=86_400,
        description="Retry-After of a 429 for queued jobs or stored bytes (the rate limit "
        "computes its own). Default: 30 s",
    )
    # --- webhooks (docs/api.md Jobs; service/webhooks/)
    webhook_allow_private: bool = Field(
        False,
        description="Allow webhook URLs whose host is (or resolves to) a loopback, private, "
        "link-local or reserved address. Default: false (no requests into the operator's "
        "network on a user's behalf)",
    )
    webhook_max_attempts: int = Field(
        10, ge=1, le=50,
        description="Attempts per delivery before it is marked failed. Default: 10",
    )
    webhook_retry_base_s: float = Field(
        5.0, gt=0, le=3600,
        description="Delay after the first failed attempt; doubles after each (capped at "
        "1 h). Default: 5 s (10 attempts span about 42 min)",
    )
    webhook_timeout_s: float = Field(
        10.0, gt=0, le=300, description="Timeout of one delivery attempt. Default: 10 s"
    )
    webhook_poll_interval_s: float = Field(
        1.0, gt=0, le=60,
        description="How often the API process looks for status changes to deliver and "
        "deliveries due. Default: 1 s",
    )

    @model_validator(mode="after")
    def _derive_defaults(self) -> Settings:
        if self.database_url is None:
            self.database_url = f"sqlite:///{(self.data_dir / 'gif.db').as_posix()}"
        if self.artifacts_dir is None:
            self.artifacts_dir = self.data_dir / "artifacts"
        if self.api_key_file is None:
            self.api_key_file = self.data_dir / "api_key"
        if self.broker_visibility_timeout_s is None:
            self.broker_visibility_timeout_s = self.job_time_limit_s + 3600.0
        if self.broker_visibility_timeout_s <= self.job_time_limit_s:
            raise ValueError(
                f"broker_visibility_timeout_s ({self.broker_visibility_timeout_s}) must exceed "
                f"job_time_limit_s ({self.job_time_limit_s}), or the broker redelivers running jobs"
            )
        if self.runner == "celery" and not self.broker_url:
            raise ValueError("runner 'celery' needs broker_url")
        return self

    @property
    def effective_runner(self) -> Literal["local", "celery", "none"]:
        """The runner actually used: ``auto`` resolved by whether a broker is configured."""
        if self.runner == "auto":
            return "celery" if self.broker_url else "local"
        return self.runner


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings from the environment (cached; tests build their own)."""
    return Settings()
