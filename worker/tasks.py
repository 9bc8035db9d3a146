"""Celery tasks. They receive ids only and re-read everything from the database."""

from __future__ import annotations

import logging

from core.queue import TRAIN_JOB_TASK, enqueue_training

from .celery_app import celery, sessions, settings, shutting_down
from .training import run_job

log = logging.getLogger("backprop.worker")


@celery.task(name=TRAIN_JOB_TASK, bind=True)
def train_job(self, job_id: str) -> None:
    handed_back = run_job(sessions, job_id, worker=self.request.hostname or "worker", settings=settings,
                          hand_back=shutting_down)
    if handed_back:  # queued again: another worker resumes it from its last checkpoint
        try:
            enqueue_training(celery, job_id)
        except Exception:  # noqa: BLE001 - the reconciler sends queued jobs whose message is lost
            log.warning("job %s was handed back but could not be sent again", job_id, exc_info=True)
