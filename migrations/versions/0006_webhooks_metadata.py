"""Job metadata, list columns (method, edit summary), webhook subscriptions and deliveries,
the owners' webhook secrets.

Rows older than this revision get ``method`` and ``edit_summary`` from their stored request,
so they are listed and filtered like new ones.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

BACKFILL_BATCH = 500


def upgrade() -> None:
    with op.batch_alter_table('owners', schema=None) as batch_op:
        batch_op.add_column(sa.Column('webhook_secret', sa.String(length=100), nullable=True))
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('method', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('edit_summary', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('metadata', sa.JSON(), nullable=True))
    op.create_table('webhook_subscriptions',
    sa.Column('job_id', sa.String(length=40), nullable=False),
    sa.Column('owner_id', sa.String(length=40), nullable=False),
    sa.Column('url', sa.String(length=2048), nullable=False),
    sa.Column('events', sa.JSON(), nullable=False),
    sa.Column('planned', sa.JSON(), nullable=False),
    sa.Column('done', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'],
                            name=op.f('fk_webhook_subscriptions_job_id_jobs')),
    sa.ForeignKeyConstraint(['owner_id'], ['owners.id'],
                            name=op.f('fk_webhook_subscriptions_owner_id_owners')),
    sa.PrimaryKeyConstraint('job_id', name=op.f('pk_webhook_subscriptions'))
    )
    with op.batch_alter_table('webhook_subscriptions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_webhook_subscriptions_done'), ['done'], unique=False)
        batch_op.create_index(batch_op.f('ix_webhook_subscriptions_owner_id'), ['owner_id'],
                              unique=False)
    op.create_table('webhook_deliveries',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('job_id', sa.String(length=40), nullable=False),
    sa.Column('owner_id', sa.String(length=40), nullable=False),
    sa.Column('event', sa.String(length=16), nullable=False),
    sa.Column('url', sa.String(length=2048), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.JSON(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'],
                            name=op.f('fk_webhook_deliveries_job_id_jobs')),
    sa.ForeignKeyConstraint(['owner_id'], ['owners.id'],
                            name=op.f('fk_webhook_deliveries_owner_id_owners')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_deliveries')),
    sa.UniqueConstraint('job_id', 'event', name='uq_webhook_deliveries_job_id_event')
    )
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_webhook_deliveries_job_id'), ['job_id'],
                              unique=False)
        batch_op.create_index(batch_op.f('ix_webhook_deliveries_next_attempt_at'),
                              ['next_attempt_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_webhook_deliveries_owner_id'), ['owner_id'],
                              unique=False)
        batch_op.create_index(batch_op.f('ix_webhook_deliveries_status'), ['status'],
                              unique=False)
    _backfill_list_columns()


def _edit_summary(edit: dict) -> dict:
    """As ``service.jobs.summary.edit_summary`` (copied: a migration must not change with the code)."""
    if "indices" in edit:
        return {"kind": edit.get("kind"), "count": len(edit["indices"])}
    return {"kind": edit.get("kind"), "class": edit.get("class")}


def _backfill_list_columns() -> None:
    jobs = sa.table('jobs', sa.column('id', sa.String), sa.column('request', sa.JSON),
                    sa.column('method', sa.String), sa.column('edit_summary', sa.JSON))
    connection = op.get_bind()
    last = ""
    while True:
        rows = connection.execute(
            sa.select(jobs.c.id, jobs.c.request).where(jobs.c.id > last)
            .order_by(jobs.c.id).limit(BACKFILL_BATCH)
        ).all()
        if not rows:
            return
        for job_id, request in rows:
            request = request or {}
            connection.execute(
                jobs.update().where(jobs.c.id == job_id).values(
                    method=request.get("method"),
                    edit_summary=_edit_summary(request.get("edit") or {}),
                )
            )
        last = rows[-1][0]


def downgrade() -> None:
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webhook_deliveries_status'))
        batch_op.drop_index(batch_op.f('ix_webhook_deliveries_owner_id'))
        batch_op.drop_index(batch_op.f('ix_webhook_deliveries_next_attempt_at'))
        batch_op.drop_index(batch_op.f('ix_webhook_deliveries_job_id'))
    op.drop_table('webhook_deliveries')
    with op.batch_alter_table('webhook_subscriptions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webhook_subscriptions_owner_id'))
        batch_op.drop_index(batch_op.f('ix_webhook_subscriptions_done'))
    op.drop_table('webhook_subscriptions')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('metadata')
        batch_op.drop_column('edit_summary')
        batch_op.drop_column('method')
    with op.batch_alter_table('owners', schema=None) as batch_op:
        batch_op.drop_column('webhook_secret')
