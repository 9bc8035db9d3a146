"""jobs.storage_bytes: what a job may store (weights, epoch history), counted against its
tenant's BACKPROP_MAX_TENANT_JOB_BYTES; finished jobs get what they store now (their weights'
bytes, and 1 KB per epoch row), a queued or running one its bound when a worker next starts it

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28 17:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("storage_bytes", sa.BigInteger(), nullable=True))
    op.execute("UPDATE jobs SET storage_bytes = "
               "(SELECT coalesce(sum(length(data)), 0) FROM weights WHERE weights.job_id = jobs.id) + "
               "(SELECT count(*) FROM epochs WHERE epochs.job_id = jobs.id) * 1024 "
               "WHERE status IN ('succeeded', 'failed', 'cancelled')")


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("storage_bytes")
