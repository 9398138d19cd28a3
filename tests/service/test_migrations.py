"""The migrations alone build the schema, and it is exactly ``service.db.models`` (SQLite and a
fresh PostgreSQL database), and they run down and up again cleanly."""

from __future__ import annotations

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
def test_migrations_build_the_models_schema_on_postgresql(new_postgres_url):
    engine = make_engine(new_postgres_url)
    try:
        _check_migrations(engine)
    finally:
        engine.dispose()


def test_0003_fills_the_model_io_of_rows_uploaded_before_it(tmp_path):
    """Models stored before 0003 get what submission validation reads (from their spec, on the
    meta device); one whose architecture is gone keeps NULLs."""
    engine = make_engine(f"sqlite:///{tmp_path / 'io.db'}")
    try:
        upgrade_engine(engine, "0002")
        with engine.begin() as connection:
            connection.execute(sa.text(
                "INSERT INTO owners (id, name, created_at) VALUES ('own_a', 'a', '2024-01-01')"))
            connection.execute(sa.text(
                "INSERT INTO artifacts (id, owner_id, sha256, size_bytes, kind, media_type, "
                "created_at) VALUES ('art_a', 'own_a', 'x', 1, 'checkpoint', 'x', '2024-01-01')"))
            for model_id, arch, kwargs in (
                ("mdl_mlp", "mlp", '{"in_features": 4, "hidden": [3], "num_classes": 5}'),
                ("mdl_cnn", "tinynet", '{"in_channels": 1, "num_classes": 7}'),
                ("mdl_gone", "no_such_arch", "{}"),
            ):
                connection.execute(sa.text(
                    "INSERT INTO models (id, owner_id, arch, arch_kwargs, input, task, "
                    "num_parameters, size_bytes, sha256, artifact_id, created_at) VALUES "
                    f"('{model_id}', 'own_a', '{arch}', '{kwargs}', '{{}}', 'classification', "
                    "1, 1, 'x', 'art_a', '2024-01-01')"))
        upgrade_engine(engine)
        with engine.connect() as connection:
            rows = {r.id: r for r in connection.execute(sa.text(
                "SELECT id, input_shape, flat_input, num_outputs FROM models"))}
        assert (rows["mdl_mlp"].input_shape, rows["mdl_mlp"].flat_input) == ("[4]", 1)
        assert rows["mdl_mlp"].num_outputs == 5
        assert (rows["mdl_cnn"].input_shape, rows["mdl_cnn"].num_outputs) == ("[1, 28, 28]", 7)
        assert (rows["mdl_gone"].flat_input, rows["mdl_gone"].num_outputs) == (None, None)
    finally:
        engine.dispose()
