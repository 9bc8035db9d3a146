"""The database decides what still has to run. The reconciler, run at worker start and then
periodically, sends again the ids of jobs whose broker message may be gone: queued jobs never
enqueued (the broker was down at submit) or enqueued long ago, and running jobs whose attempt
stopped sending heartbeats (its worker died). Duplicate messages are harmless: a claim takes
the job only when it is queued, or running with a stale heartbeat."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from celery import Celery
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.db import JOB_UPDATE_LOCK, Job, JobStatus
from core.db.models import utcnow
from core.idempotency import purge_expired_keys
from core.queue import enqueue_training

log = logging.getLogger("backprop.reconciler")


def reconcile(sessions: sessionmaker[Session], celery: Celery, settings: Settings) -> list[str]:
    """Re-enqueue lost jobs; returns their ids."""
    now = utcnow()
    requeue_before = now - timedelta(seconds=settings.requeue_after_seconds)
    stale_before = now - timedelta(seconds=settings.stale_after_seconds)
    not_recently_sent = or_(Job.enqueued_at.is_(None), Job.enqueued_at < requeue_before)
    lost = or_(
        Job.status == JobStatus.QUEUED,
        and_(Job.status.in_(JobStatus.CLAIMED),
             or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before)),
    )
    with sessions() as session:
        rows = session.execute(select(Job.id, Job.status, Job.created_at, Job.enqueued_at)
                               .where(lost, not_recently_sent).order_by(Job.created_at)).all()
    sent = []
    for job_id, status, created_at, enqueued_at in rows:
        if status == JobStatus.QUEUED and enqueued_at is not None:
            # A queued job's message is most likely still waiting behind others: each re-send
            # waits as long as the job had waited when last sent (up to 10 x requeue_after), so a
            # backlog gets a few duplicates per job, not one every requeue_after.
            backoff = min(max(enqueued_at - created_at, timedelta(0)), 10 * (now - requeue_before))
            if now - enqueued_at < backoff:
                continue
        # take the re-send first, atomically: with several workers reconciling, one sends it. A
        # row locked by someone is skipped this round, not waited for: a worker frozen inside a
        # transaction on it held every reconciler, and so every other lost job, until it woke
        with sessions.begin() as session:
            free = (select(Job.id).where(Job.id == job_id)
                    .with_for_update(skip_locked=True, **JOB_UPDATE_LOCK).scalar_subquery())
            taken = session.execute(update(Job).where(Job.id == free, lost, not_recently_sent)
                                    .values(enqueued_at=utcnow())).rowcount
        if not taken:
            continue
        try:
            enqueue_training(celery, job_id)
        except Exception as exc:  # noqa: BLE001 - broker still down: give the re-send back, try next round
            log.warning("reconciler could not enqueue %s: %s", job_id, exc)
            with sessions.begin() as session:
                session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=None))
            break
        sent.append(job_id)
    if sent:
        log.info("reconciler re-enqueued %d job(s): %s", len(sent), ", ".join(sent))
    return sent


class ReconcilerThread(threading.Thread):
    def __init__(self, sessions, celery, settings: Settings):
        super().__init__(name="reconciler", daemon=True)
        self.sessions, self.celery, self.settings = sessions, celery, settings
        self.stopping = threading.Event()

    def run(self) -> None:
        while True:
            try:
                reconcile(self.sessions, self.celery, self.settings)
                purge_expired_keys(self.sessions, self.settings)  # housekeeping on the same beat
            except Exception:  # noqa: BLE001 - keep reconciling after a database hiccup
                log.warning("reconcile round failed", exc_info=True)
            if self.stopping.wait(self.settings.reconcile_seconds):
                return
