"""Schema migrations: the only way the schema is ever created or changed.

``gif-service migrate`` and ``gif-service serve`` call :func:`upgrade`; tests call it on a fresh
SQLite file and a fresh PostgreSQL database and check the result equals ``service.db.models``."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from service.db.session import make_engine
from service.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config() -> Config:
    """The Alembic config of ``migrations/`` (independent of the working directory)."""
    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade_engine(engine: sa.Engine, revision: str = "head") -> None:
    """Migrate the database behind ``engine`` to ``revision``."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade_engine(engine: sa.Engine, revision: str) -> None:
    """Migrate the database behind ``engine`` back to ``revision`` (``base``: empty)."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Migrate ``settings.database_url`` to ``revision`` (default: the newest)."""
    assert settings.database_url is not None
    engine = make_engine(settings.database_url)
    try:
        upgrade_engine(engine, revision)
    finally:
        engine.dispose()


def head_revision() -> str | None:
    """The newest revision in ``migrations/versions``."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: sa.Engine) -> str | None:
    """The revision the database is at (None: never migrated)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
