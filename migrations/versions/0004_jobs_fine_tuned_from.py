"""jobs: fine_tuned_from, the init_from a job was submitted with, kept when that job is deleted

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 06:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fine_tuned_from", sa.String(length=32), nullable=True))
    # what is still known: a parent deleted before this revision left no trace but `freeze`
    op.execute("UPDATE jobs SET fine_tuned_from = init_from WHERE init_from IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("fine_tuned_from")
