"""Storage: SQLAlchemy models and the session factory (no Flask, no Celery)."""

from .models import Base, Dataset, EpochRecord, Job, JobStatus, WeightArray
from .session import make_engine, make_sessionmaker

__all__ = ["Base", "Dataset", "EpochRecord", "Job", "JobStatus", "WeightArray", "make_engine",
           "make_sessionmaker"]
