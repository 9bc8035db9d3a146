"""Celery tasks. They receive ids only and re-read everything from the database."""

from __future__ import annotations

from core.queue import TRAIN_JOB_TASK

from .celery_app import celery, sessions, settings
from .training import run_job


@celery.task(name=TRAIN_JOB_TASK, bind=True)
def train_job(self, job_id: str) -> None:
    run_job(sessions, job_id, worker=self.request.hostname or "worker", settings=settings)
