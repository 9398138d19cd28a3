"""Deletion is erasure: ``erasures`` (the audit records), ``artifacts.erased_at`` (a file's
reference is gone; the bytes go with the last one) and ``jobs.deleted_at`` (an erased job), ``datasets.source_job_id`` (the job whose
``outputs.retained_dataset`` made it).

Revision ID: 0005
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'erasures',
        sa.Column('id', sa.String(length=40), nullable=False),
        sa.Column('owner_id', sa.String(length=40), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('object_id', sa.String(length=40), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=True),
        sa.Column('sha256', sa.String(length=64), nullable=True),
        sa.Column('size_bytes', sa.BigInteger(), nullable=True),
        sa.Column('reason', sa.String(length=16), nullable=False),
        sa.Column('api_key_id', sa.String(length=40), nullable=True),
        sa.Column('job_id', sa.String(length=40), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['owner_id'], ['owners.id'],
                                name=op.f('fk_erasures_owner_id_owners')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_erasures')),
    )
    with op.batch_alter_table('erasures', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_erasures_owner_id'), ['owner_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_erasures_object_id'), ['object_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_erasures_created_at'), ['created_at'], unique=False)
    with op.batch_alter_table('artifacts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('erased_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source_job_id', sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.drop_column('source_job_id')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('deleted_at')
    with op.batch_alter_table('artifacts', schema=None) as batch_op:
        batch_op.drop_column('erased_at')
    with op.batch_alter_table('erasures', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_erasures_created_at'))
        batch_op.drop_index(batch_op.f('ix_erasures_object_id'))
        batch_op.drop_index(batch_op.f('ix_erasures_owner_id'))
    op.drop_table('erasures')
