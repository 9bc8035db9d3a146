"""Celery tasks. They receive ids only and re-read everything from the database."""

from __future__ import annotations

import logging

from core.queue import TRAIN_JOB_TASK, enqueue_training

from .celery_app import celery, sessions, settings, shutting_down
from .training import run_job

log = logging.getLogger("backprop.worker")


@celery.task(name=TRAIN_JOB_TASK, bind=True)
def train_job(self, job_id: str) -> None:
    if shutting_down():
        # taken while this worker stops (a job another process just handed back, say): claimed,
        # it would read its data only to hand it back at the first batch, and again, for as long
        # as the consumer still takes messages; sent on untouched instead
        _send_again(job_id)
        return
    if run_job(sessions, job_id, worker=self.request.hostname or "worker", settings=settings,
               hand_back=shutting_down):
        _send_again(job_id)  # queued again: another worker resumes it from its last checkpoint


def _send_again(job_id: str) -> None:
    try:
        enqueue_training(celery, job_id)
    except Exception:  # noqa: BLE001 - the reconciler sends queued jobs whose message is lost
        log.warning("job %s is queued but could not be sent again", job_id, exc_info=True)
