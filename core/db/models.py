"""The database schema: datasets, jobs, their per-epoch history and their learned weights.
Arrays are stored as raw bytes with dtype and shape beside them (never pickled, never JSON)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator):
    """Timestamps come back as aware UTC datetimes on every backend (SQLite returns them naive),
    so no caller has to patch the time zone on."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value, dialect):
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


DEFAULT_TENANT = "default"


class JobStatus:
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
    CLAIMED = (RUNNING, CANCELLING)  # an attempt holds it (alive, or lost until its heartbeat is stale)
    ACTIVE = (QUEUED, RUNNING, CANCELLING)
    ALL = (QUEUED, RUNNING, CANCELLING, SUCCEEDED, FAILED, CANCELLED)


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(64), index=True, default=DEFAULT_TENANT)
    name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    source: Mapped[str] = mapped_column(String(16), default="inline")  # inline, json, csv, npy, npz
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    n_samples: Mapped[int] = mapped_column(Integer)
    feature_shape: Mapped[list[int]] = mapped_column(JSON)  # one sample, no batch axis
    feature_dtype: Mapped[str] = mapped_column(String(16))
    features: Mapped[bytes] = mapped_column(LargeBinary)
    target_shape: Mapped[list[int]] = mapped_column(JSON)  # one sample's target
    target_dtype: Mapped[str] = mapped_column(String(16))
    targets: Mapped[bytes] = mapped_column(LargeBinary)
    feature_names: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    class_labels: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)  # original labels, by index
    target_kind: Mapped[str] = mapped_column(String(16), default="unknown")  # classes, continuous
    class_counts: Mapped[dict[str, int] | None] = mapped_column(JSON, nullable=True)
    checksum: Mapped[str] = mapped_column(String(64))


# How a job row is locked for an update that keeps its id: FOR NO KEY UPDATE on PostgreSQL,
# which does not wait for the KEY SHARE lock taken by inserting a row that references the job
# (a checkpoint blob, for seconds); FOR UPDATE would. A delete of the job locks FOR UPDATE.
JOB_UPDATE_LOCK = {"key_share": True}


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # a tenant's listing, newest first, and its keyset pages: one index range, no sort
        Index("ix_jobs_tenant_created_at_id", "tenant", "created_at", "id"),
        # a tenant's jobs by status (the active-jobs limit, status filters)
        Index("ix_jobs_tenant_status", "tenant", "status"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(64), index=True, default=DEFAULT_TENANT)
    status: Mapped[str] = mapped_column(String(16), index=True, default=JobStatus.QUEUED)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    model_spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    training_spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    total_epochs: Mapped[int] = mapped_column(Integer)
    epochs_done: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # the epoch whose numbers `metrics` holds: the latest, or the best one early stopping restored
    metrics_epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    stop_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # fine-tuning: start from this job's weights, with these top-level layers frozen
    # indexed: deleting a job sets this to NULL in the jobs fine-tuned from it (a scan of all jobs)
    init_from: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True,
                                                  index=True)
    freeze: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    # the label each output unit answers, where it is not the dataset's: a fine-tune on some of
    # its parent's classes keeps the parent's units and labels (see core.store.output_classes)
    class_labels: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    # what the job may store at most (weights, epoch history), counted against its tenant's
    # BACKPROP_MAX_TENANT_JOB_BYTES from its submission on (core/store.py: job_storage_bytes)
    storage_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # init_from as submitted: kept when that job is deleted (init_from is then cleared), so that
    # a retry is never a fine-tune silently started from random weights
    fine_tuned_from: Mapped[str | None] = mapped_column(String(32), nullable=True)
    retry_of: Mapped[str | None] = mapped_column(String(32), nullable=True)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    dataset: Mapped[Dataset] = relationship()


class EpochRecord(Base):
    __tablename__ = "epochs"
    __table_args__ = (UniqueConstraint("job_id", "epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float] = mapped_column(Float)
    metrics: Mapped[dict[str, float]] = mapped_column(JSON)  # val_loss, accuracy, lr, ...
    grad_norms: Mapped[dict[str, float]] = mapped_column(JSON)
    weight_norms: Mapped[dict[str, float]] = mapped_column(JSON)
    duration: Mapped[float] = mapped_column(Float)


class WeightArray(Base):
    __tablename__ = "weights"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    dtype: Mapped[str] = mapped_column(String(16))
    shape: Mapped[list[int]] = mapped_column(JSON)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Checkpoint(Base):
    """The latest resumable state of a running job (trainer state as .npz, no pickle), written
    in the same transaction as the epochs it covers. A job has one committed checkpoint; the key
    holds the attempt and epoch so that the next one can be inserted before the job row is
    locked (a large blob takes seconds to write) and the previous one deleted under that lock."""

    __tablename__ = "checkpoints"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class RegisteredModel(Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("tenant", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT)
    name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ModelAlias(Base):
    __tablename__ = "model_aliases"

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


class ApiKey(Base):
    """Only a SHA-256 of the key is kept (keys are 256 random bits, so a fast hash is enough);
    the prefix finds the row, the hash is compared in constant time."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_keys"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(JSON)
    location: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # keys expire (Settings.idempotency_hours); the index serves the periodic purge
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
