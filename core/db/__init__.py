"""Storage: SQLAlchemy models and the session factory (no Flask, no Celery)."""

from .models import (
    DEFAULT_TENANT,
    JOB_UPDATE_LOCK,
    ApiKey,
    Base,
    Checkpoint,
    Dataset,
    EpochRecord,
    IdempotencyRecord,
    Job,
    JobStatus,
    ModelAlias,
    ModelVersion,
    RegisteredModel,
    WeightArray,
)
from .session import make_engine, make_sessionmaker

__all__ = ["DEFAULT_TENANT", "JOB_UPDATE_LOCK", "ApiKey", "Base", "Checkpoint", "Dataset", "EpochRecord",
           "IdempotencyRecord", "Job", "JobStatus", "ModelAlias", "ModelVersion", "RegisteredModel", "WeightArray",
           "make_engine", "make_sessionmaker"]
