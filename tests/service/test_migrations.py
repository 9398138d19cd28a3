"""The migrations alone build the schema, and it is exactly ``service.db.models`` (SQLite and a
fresh PostgreSQL database), and they run down and up again cleanly."""

from __future__ import annotations

import secrets

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from service.db.migrate import current_revision, downgrade_engine, head_revision, upgrade_engine
from service.db.models import Base
from service.db.session import make_engine


def _schema_differences(engine: sa.Engine) -> list:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def _check_migrations(engine: sa.Engine) -> None:
    assert current_revision(engine) is None
    upgrade_engine(engine)
    assert current_revision(engine) == head_revision()
    assert set(sa.inspect(engine).get_table_names()) == set(Base.metadata.tables) | {
        "alembic_version"
    }
    assert _schema_differences(engine) == []
    upgrade_engine(engine)  # idempotent: already at head
    assert current_revision(engine) == head_revision()
    downgrade_engine(engine, "base")
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade_engine(engine)
    assert _schema_differences(engine) == []


def test_migrations_build_the_models_schema_on_sqlite(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        _check_migrations(engine)
    finally:
        engine.dispose()


def test_sqlite_engine_enforces_foreign_keys_and_uses_wal(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'fk.db'}")
    try:
        upgrade_engine(engine)
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO api_keys (id, owner_id, prefix, key_hash, created_at) "
                    "VALUES ('key_x', 'own_missing', 'gif_abcdefgh', 'h', '2024-01-01')"
                )
            )
    finally:
        engine.dispose()


@pytest.mark.services
def test_migrations_build_the_models_schema_on_postgresql(postgres_url):
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    name = f"gif_migration_test_{secrets.token_hex(4)}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine = make_engine(sa.make_url(postgres_url).set(database=name).render_as_string(False))
    try:
        _check_migrations(engine)
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
