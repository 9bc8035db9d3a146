"""jobs: indexes for a tenant's listing in keyset order (tenant, created_at, id), a tenant's jobs
by status, and init_from (deleting a job sets it to NULL in its fine-tunes: a scan of every job
without it)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 11:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_tenant_created_at_id", ["tenant", "created_at", "id"], unique=False)
        batch_op.create_index("ix_jobs_tenant_status", ["tenant", "status"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_init_from"), ["init_from"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_init_from"))
        batch_op.drop_index("ix_jobs_tenant_status")
        batch_op.drop_index("ix_jobs_tenant_created_at_id")
