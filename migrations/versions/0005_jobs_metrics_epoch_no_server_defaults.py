"""jobs: metrics_epoch, the epoch whose numbers `metrics` holds (an early-stopped run that restored
its best weights holds that epoch's, not the last one's); and no server defaults left over from
0002's backfill of tenant, source and target_kind (the models declare none: a row the application
forgot to fill would have been filed under the default tenant instead of failing)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 10:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("metrics_epoch", sa.Integer(), nullable=True))
        batch_op.alter_column("tenant", existing_type=sa.String(length=64), existing_nullable=False,
                              server_default=None)
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        for column in ("tenant", "source", "target_kind"):
            batch_op.alter_column(column, existing_type=sa.String(length=64 if column == "tenant" else 16),
                                  existing_nullable=False, server_default=None)
    _backfill_metrics_epoch()


def _backfill_metrics_epoch() -> None:
    """A job's metrics are its last epoch's, except after early stopping restored the best
    weights: then they are the epoch whose stored loss and metrics they equal."""
    conn = op.get_bind()
    conn.execute(sa.text("UPDATE jobs SET metrics_epoch = epochs_done "
                         "WHERE metrics IS NOT NULL AND epochs_done > 0"))
    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("metrics", sa.JSON),
                    sa.column("metrics_epoch", sa.Integer), sa.column("stop_reason", sa.String))
    epochs = sa.table("epochs", sa.column("job_id", sa.String), sa.column("epoch", sa.Integer),
                      sa.column("loss", sa.Float), sa.column("metrics", sa.JSON))
    stopped = conn.execute(sa.select(jobs.c.id, jobs.c.metrics)
                           .where(jobs.c.stop_reason == "early_stopping", jobs.c.metrics.is_not(None))).all()
    for job_id, metrics in stopped:
        rows = conn.execute(sa.select(epochs.c.epoch, epochs.c.loss, epochs.c.metrics)
                            .where(epochs.c.job_id == job_id).order_by(epochs.c.epoch.desc())).all()
        match = next((epoch for epoch, loss, m in rows if {"loss": loss, **(m or {})} == metrics), None)
        if match is not None:
            conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(metrics_epoch=match))


def downgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.alter_column("tenant", existing_type=sa.String(length=64), existing_nullable=False,
                              server_default="default")
        batch_op.alter_column("source", existing_type=sa.String(length=16), existing_nullable=False,
                              server_default="inline")
        batch_op.alter_column("target_kind", existing_type=sa.String(length=16), existing_nullable=False,
                              server_default="unknown")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column("tenant", existing_type=sa.String(length=64), existing_nullable=False,
                              server_default="default")
        batch_op.drop_column("metrics_epoch")
