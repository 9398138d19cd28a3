"""jobs.enqueued_at: when the job's message was handed to the runner (NULL: maybe never sent).

Rows that exist before this revision are taken as sent (``enqueued_at = created_at``): the
code that wrote them withdrew every job whose send failed, so only a job lost to an API crash
is marked wrong, and it was stuck before this revision too.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('enqueued_at', sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE jobs SET enqueued_at = created_at")


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('enqueued_at')
