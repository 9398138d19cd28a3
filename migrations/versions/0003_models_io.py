"""models.input_shape, flat_input, num_outputs: what a model takes and gives (gif.fit.ModelIO),
stored at upload so a job submission is validated on metadata, without torch.

Rows that exist before this revision are filled from their architecture spec (the weights are
not needed: ``gif.registry.model_io`` builds the model on the meta device); a row whose
architecture is no longer installed keeps NULLs (submission then skips those checks and the
worker checks at load).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.add_column(sa.Column('input_shape', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('flat_input', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('num_outputs', sa.Integer(), nullable=True))
    _fill_existing_rows()


def _fill_existing_rows() -> None:
    connection = op.get_bind()
    models = sa.table(
        'models', sa.column('id'), sa.column('arch'), sa.column('arch_kwargs', sa.JSON),
        sa.column('input', sa.JSON), sa.column('input_shape', sa.JSON),
        sa.column('flat_input', sa.Boolean), sa.column('num_outputs', sa.Integer),
    )
    rows = connection.execute(sa.select(models.c.id, models.c.arch, models.c.arch_kwargs,
                                        models.c.input)).all()
    if not rows:
        return  # a fresh database: nothing to fill, and no reason to load the engine
    from gif.registry import model_io  # the engine, only to upgrade an existing database
    from gif.spec import ModelSpec

    for row in rows:
        try:
            io = model_io(ModelSpec(arch=row.arch, arch_kwargs=row.arch_kwargs or {},
                                    input=row.input or {}))
        except Exception:  # an architecture no longer installed, a spec it now refuses
            continue
        values = io.to_json()
        connection.execute(
            models.update().where(models.c.id == row.id).values(
                input_shape=values["sample_shape"], flat_input=io.flat_input,
                num_outputs=io.num_outputs,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.drop_column('num_outputs')
        batch_op.drop_column('flat_input')
        batch_op.drop_column('input_shape')
