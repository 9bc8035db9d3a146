"""checkpoints: keyed by (job_id, attempt, epoch), so that a job's next checkpoint is inserted
before its job row is locked and the previous one is deleted under that lock

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.drop_constraint("pk_checkpoints", type_="primary")
        batch_op.create_primary_key("pk_checkpoints", ["job_id", "attempt", "epoch"])


def downgrade() -> None:
    # one row per job again: a job has one committed checkpoint; should it have more, the latest stays
    checkpoints = sa.table("checkpoints", sa.column("job_id"), sa.column("attempt"), sa.column("epoch"))
    newer = sa.table("checkpoints", sa.column("job_id"), sa.column("attempt"), sa.column("epoch")).alias("newer")
    op.execute(checkpoints.delete().where(sa.exists().where(
        newer.c.job_id == checkpoints.c.job_id,
        sa.tuple_(newer.c.epoch, newer.c.attempt) > sa.tuple_(checkpoints.c.epoch, checkpoints.c.attempt))))
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.drop_constraint("pk_checkpoints", type_="primary")
        batch_op.create_primary_key("pk_checkpoints", ["job_id"])
