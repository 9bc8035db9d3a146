"""Running one job: claim it, train it with the engine, write its history as it goes, and end
it in exactly one terminal state with a readable reason."""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from core.db import Job, JobStatus
from core.db.models import utcnow
from core.nn import Network, SpecError, Trainer, TrainingDiverged
from core.store import add_epoch, dataset_arrays, load_weights, save_weights

log = logging.getLogger("backprop.worker")

FLUSH_SECONDS = 0.25  # epochs are written together at most this often (and always at the end)
CANCEL_POLL_SECONDS = 0.5


class EpochWriter:
    """Buffers finished epochs and writes them in one short transaction every FLUSH_SECONDS, so
    a client sees progress while thousands of tiny epochs do not mean thousands of commits."""

    def __init__(self, sessions: sessionmaker[Session], job_id: str):
        self.sessions, self.job_id = sessions, job_id
        self.pending: list[dict[str, Any]] = []
        self.last_flush = time.monotonic()
        self.last_weights: dict | None = None

    def on_epoch(self, record: dict[str, Any], trainer: Trainer) -> None:
        self.pending.append(record)
        self.last_weights = trainer.net.get_weights()
        if time.monotonic() - self.last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            with self.sessions.begin() as session:
                job = session.get(Job, self.job_id)
                for record in self.pending:
                    add_epoch(session, job, record)
            self.pending = []
        self.last_flush = time.monotonic()


class CancelWatch:
    """The engine's per-batch stop hook; asks the database at most every CANCEL_POLL_SECONDS."""

    def __init__(self, sessions: sessionmaker[Session], job_id: str):
        self.sessions, self.job_id = sessions, job_id
        self.next_check = 0.0

    def __call__(self) -> bool:
        now = time.monotonic()
        if now < self.next_check:
            return False
        self.next_check = now + CANCEL_POLL_SECONDS
        with self.sessions() as session:
            return bool(session.get(Job, self.job_id).cancel_requested)


def _claim(sessions: sessionmaker[Session], job_id: str, worker: str):
    with sessions.begin() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            log.warning("job %s does not exist; message dropped", job_id)
            return None
        if job.status in JobStatus.TERMINAL:
            log.info("job %s is already %s; nothing to do", job_id, job.status)
            return None
        if job.cancel_requested:
            job.status, job.finished_at, job.stop_reason = JobStatus.CANCELLED, utcnow(), "cancelled"
            return None
        job.status = JobStatus.RUNNING
        job.started_at = job.started_at or utcnow()
        job.attempts += 1
        job.worker = worker
        x, y = dataset_arrays(job.dataset)
        start = load_weights(session, job.init_from) if job.init_from else None
        return job.model_spec, job.training_spec, x, y, start, job.freeze


def _finish(sessions, job_id: str, status: str, *, weights=None, stop_reason=None, error=None) -> None:
    with sessions.begin() as session:
        job = session.get(Job, job_id)
        if weights is not None:
            save_weights(session, job_id, weights)
        job.status, job.stop_reason, job.error, job.finished_at = status, stop_reason, error, utcnow()


def run_job(sessions: sessionmaker[Session], job_id: str, worker: str = "worker") -> None:
    claimed = _claim(sessions, job_id, worker)
    if claimed is None:
        return
    model_spec, training_spec, x, y, start_weights, freeze = claimed
    log.info("job %s running on %s", job_id, worker)
    writer = EpochWriter(sessions, job_id)
    try:
        net = Network.from_spec(model_spec, seed=training_spec["seed"])
        if start_weights:  # fine-tuning: backpropagation continues from the parent's weights
            net.set_weights(start_weights)
            net.freeze(freeze or [])
        trainer = Trainer(net, training_spec)
        result = trainer.fit(x, y, on_epoch=writer.on_epoch, should_stop=CancelWatch(sessions, job_id))
        writer.flush()
        if result.stop_reason == "cancelled":
            # keep the weights of the last finished epoch, not a half-trained one
            _finish(sessions, job_id, JobStatus.CANCELLED, weights=writer.last_weights,
                    stop_reason="cancelled")
        else:
            _finish(sessions, job_id, JobStatus.SUCCEEDED, weights=net.get_weights(),
                    stop_reason=result.stop_reason)
        log.info("job %s ended: %s", job_id, result.stop_reason)
    except (TrainingDiverged, SpecError, ValueError) as exc:
        writer.flush()
        _finish(sessions, job_id, JobStatus.FAILED, error=str(exc), stop_reason="error")
        log.warning("job %s failed: %s", job_id, exc)
    except Exception as exc:
        log.exception("job %s crashed", job_id)
        writer.flush()
        _finish(sessions, job_id, JobStatus.FAILED, stop_reason="error",
                error=f"internal error: {exc.__class__.__name__}: {exc}")
