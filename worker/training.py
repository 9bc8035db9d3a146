"""Running one job: claim it, train it with the engine, write its history and checkpoints as it
goes, and end it in exactly one terminal state with a readable reason.

Crash safety: every claim increments `jobs.attempts`, and every later write re-checks under a
row lock that the counter is still this attempt's (a fence), so a stale copy of the task can
never write. Checkpoints are committed together with the epochs they cover; an attempt that
takes over resumes from the last checkpoint and re-runs the epochs after it deterministically."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import OperationalError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings, load_settings
from core.db import JOB_UPDATE_LOCK, Checkpoint, Dataset, EpochRecord, Job, JobStatus
from core.db.models import utcnow
from core.logs import job_id_var
from core.metrics import EPOCH_DURATION, EPOCHS, JOBS_FINISHED
from core.nn import Network, SpecError, Trainer, TrainingDiverged
from core.nn.network import shapes_only
from core.nn.serialization import arrays_from_npz, arrays_to_npz
from core.nn.training import weights_in_state
from core.store import (
    add_epochs,
    cancel_between_attempts,
    dataset_arrays,
    forget_epochs_after,
    job_storage_bytes,
    latest_checkpoint,
    load_weights,
    metrics_of_epoch,
    output_classes,
    save_weights,
)

log = logging.getLogger("backprop.worker")

FLUSH_SECONDS = 0.25  # epochs are written together at most this often (and always at the end)
LONG_EPOCH_SECONDS = 1.0  # an epoch longer than this is always checkpointed
# a job queued again after a database error is sent on after this, doubled at each attempt, so
# that BACKPROP_MAX_ATTEMPTS bounds a failure that keeps coming back, not a blip of a second
DATABASE_RETRY_SECONDS = 5.0


class Superseded(Exception):
    """Another attempt owns the job now (or it was deleted); this one must stop without writing."""


@dataclass
class Claim:
    attempt: int
    model_spec: dict[str, Any]
    training_spec: dict[str, Any]
    dataset_id: str
    init_from: str | None
    freeze: list[str] | None
    class_labels: list[Any] | None  # the output units' labels, where they are not the dataset's
    checkpoint: bytes | None
    trained_seconds: float  # by the epochs kept from earlier attempts: the time limit's share used


class Attempt:
    """One attempt's right to write to its job."""

    def __init__(self, sessions: sessionmaker[Session], job_id: str, number: int):
        self.sessions, self.job_id, self.number = sessions, job_id, number
        self.cancel_requested = False  # seen on the job row by the last write

    @contextmanager
    def write(self, checkpoint: Checkpoint | None = None) -> Iterator[tuple[Session, Job]]:
        """A transaction holding the job row, committed only if this attempt still owns the job.
        A `checkpoint` is inserted before the row is locked: its blob can take seconds to write
        (200 MB: 8 s here), during which a cancel or a heartbeat would otherwise wait. Its
        foreign key check only takes a KEY SHARE lock, which no lock on a job row for an update
        (FOR NO KEY UPDATE) waits for; a superseded attempt's rolls back with the fence."""
        with self.sessions.begin() as session:
            if checkpoint is not None:
                session.add(checkpoint)
                session.flush()
            job = session.get(Job, self.job_id, with_for_update=JOB_UPDATE_LOCK, populate_existing=True)
            if job is None or job.attempts != self.number or job.status not in JobStatus.CLAIMED:
                raise Superseded(self.job_id)
            if checkpoint is not None:  # under the lock, so that a job has one checkpoint at a time
                session.execute(delete(Checkpoint).where(
                    Checkpoint.job_id == job.id,
                    (Checkpoint.attempt != checkpoint.attempt) | (Checkpoint.epoch != checkpoint.epoch)))
            self.cancel_requested = job.cancel_requested
            yield session, job


class Monitor:
    """A heartbeat thread: proves the attempt is alive, and brings back cancellation, the time
    limit and supersession as flags, so the engine's per-batch stop hook costs nothing."""

    def __init__(self, attempt: Attempt, settings: Settings, trained_seconds: float,
                 hand_back: Callable[[], bool] | None = None):
        self.attempt, self.settings = attempt, settings
        # the limit bounds training, summed over attempts: time spent queued (after a hand-back,
        # behind a backlog, with no worker) does not count, or a resumed job could fail at once
        self.deadline = utcnow() + timedelta(seconds=settings.job_time_limit - trained_seconds)
        self.hand_back = hand_back  # true once the worker is shutting down
        self.reason: str | None = None  # cancelled, time limit, superseded, handed back
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{attempt.job_id[:8]}", daemon=True)

    def should_stop(self) -> bool:
        # epoch writes (every <= 0.25 s) also read the cancel flag, so short epochs stop promptly
        if self.reason is None and self.attempt.cancel_requested:
            self.reason = "cancelled"
        if self.reason is None and self.hand_back is not None and self.hand_back():
            self.reason = "handed back"
        return self.reason is not None

    def start(self) -> Monitor:
        self.beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_seconds):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - a database hiccup must not kill training
                log.warning("heartbeat for job %s failed", self.attempt.job_id, exc_info=True)

    def beat(self) -> None:
        a = self.attempt
        now = utcnow()
        with a.sessions.begin() as session:
            done = session.execute(
                update(Job).where(Job.id == a.job_id, Job.attempts == a.number,
                                  Job.status.in_(JobStatus.CLAIMED))
                .values(heartbeat_at=now).returning(Job.cancel_requested)).first()
        if done is None:
            self.reason = "superseded"
        elif done.cancel_requested:
            self.reason = "cancelled"
        elif now >= self.deadline:
            self.reason = "time limit"


class EpochWriter:
    """Buffers finished epochs and writes them in one short transaction every FLUSH_SECONDS, with
    a checkpoint every `checkpoint_seconds` (and after every long epoch) in the same transaction."""

    def __init__(self, attempt: Attempt, settings: Settings):
        self.attempt, self.settings = attempt, settings
        self.pending: list[dict[str, Any]] = []
        self.last_flush = self.last_checkpoint = time.monotonic()
        self.last_snapshot = None  # trainer.net.snapshot() after the last finished epoch
        self.restored_weights: dict | None = None  # from a checkpoint, before any epoch of this attempt
        self.net = None

    def on_epoch(self, record: dict[str, Any], trainer: Trainer) -> None:
        EPOCH_DURATION.observe(record["duration"])
        EPOCHS.inc()
        self.pending.append(record)
        self.net, self.last_snapshot = trainer.net, trainer.net.snapshot()  # what a cancelled job keeps
        now = time.monotonic()
        if record["duration"] > LONG_EPOCH_SECONDS or now - self.last_checkpoint >= self.settings.checkpoint_seconds:
            meta, arrays = trainer.state(history=False)
            self.flush(Checkpoint(job_id=self.attempt.job_id, epoch=record["epoch"], attempt=self.attempt.number,
                                  created_at=utcnow(), data=arrays_to_npz(arrays, meta)))
        elif now - self.last_flush >= FLUSH_SECONDS:
            self.flush()

    @property
    def last_weights(self) -> dict | None:
        """The weights after the last finished epoch (None before any)."""
        if self.last_snapshot is not None:
            return self.net.weights_of(self.last_snapshot)
        return self.restored_weights

    def flush(self, checkpoint: Checkpoint | None = None) -> None:
        if self.pending or checkpoint:
            with self.attempt.write(checkpoint) as (session, job):
                add_epochs(session, job, self.pending)
            self.pending = []
            if checkpoint is not None:
                self.last_checkpoint = time.monotonic()
        self.last_flush = time.monotonic()


def _heartbeat_fresh(job: Job, settings: Settings) -> bool:
    if job.heartbeat_at is None:
        return False
    return (utcnow() - job.heartbeat_at).total_seconds() < settings.stale_after_seconds


def _claim(sessions: sessionmaker[Session], job_id: str, worker: str, settings: Settings) -> Claim | None:
    with sessions.begin() as session:
        job = session.get(Job, job_id, with_for_update=JOB_UPDATE_LOCK)
        if job is None:
            log.warning("job %s does not exist; message dropped", job_id)
            return None
        if job.status in JobStatus.TERMINAL:
            log.info("job %s is already %s; nothing to do", job_id, job.status)
            return None
        if job.status in JobStatus.CLAIMED and _heartbeat_fresh(job, settings):
            log.info("job %s is running elsewhere (attempt %s); duplicate message dropped", job_id, job.attempts)
            return None
        if job.cancel_requested:
            cancel_between_attempts(session, job)
            JOBS_FINISHED.labels(JobStatus.CANCELLED).inc()
            return None
        checkpoint = latest_checkpoint(session, job_id)
        if job.attempts >= settings.max_attempts:
            job.status, job.finished_at, job.stop_reason = JobStatus.FAILED, utcnow(), "error"
            last = f"; the last attempt was {job.error}" if job.error else ""
            job.error = (f"gave up after {job.attempts} attempts: the worker running this job was lost, or the "
                         f"database failed under it, each time (BACKPROP_MAX_ATTEMPTS={settings.max_attempts}){last}")
            session.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id))
            log.error("job %s: %s", job_id, job.error)
            JOBS_FINISHED.labels(JobStatus.FAILED).inc()  # the jobs to alert on: they kill workers
            return None
        job.attempts += 1
        if job.storage_bytes is None:  # queued before migration 0009: counted from its first claim
            job.storage_bytes = _storage_bound(job)
        job.status = JobStatus.RUNNING
        job.started_at = job.started_at or utcnow()
        job.heartbeat_at = utcnow()
        job.worker = worker
        # epochs after the checkpoint will be trained again, and written again, by this attempt
        forget_epochs_after(session, job, checkpoint.epoch if checkpoint is not None else 0)
        trained = session.scalar(select(func.coalesce(func.sum(EpochRecord.duration), 0.0))
                                 .where(EpochRecord.job_id == job_id))
        # committed before the data is read, so that a worker killed while reading it (a large
        # dataset, out of memory) has still used up an attempt, and BACKPROP_MAX_ATTEMPTS ends it
        return Claim(job.attempts, job.model_spec, job.training_spec, job.dataset_id, job.init_from, job.freeze,
                     job.class_labels,
                     checkpoint.data if checkpoint is not None else None, float(trained))


def _storage_bound(job: Job) -> int | None:
    """What the job may store (core.store.job_storage_bytes); None for a spec that no longer
    builds, which the attempt then fails on, naming why."""
    try:
        return job_storage_bytes(shapes_only(job.model_spec), job.training_spec)
    except (SpecError, ValueError, KeyError):
        return None


def _load(sessions: sessionmaker[Session], claim: Claim) -> tuple[Any, Any, dict | None]:
    """The claimed job's data, and the weights fine-tuning starts from (None when it resumes
    from a checkpoint, which holds its own)."""
    with sessions() as session:
        ds = session.get(Dataset, claim.dataset_id)
        x, y = dataset_arrays(ds)
        if claim.class_labels is not None:  # a fine-tune on some of its parent's classes
            y = output_classes(y, ds.class_labels, claim.class_labels)
        if not claim.init_from or claim.checkpoint is not None:
            return x, y, None
        start = load_weights(session, claim.init_from)
    if not start:  # never train "fine-tuning" from random weights without saying so
        raise ValueError(f"init_from job {claim.init_from} has no stored weights to start from")
    return x, y, start


def _finish(attempt: Attempt, status: str, *, weights=None, stop_reason=None, error=None,
            metrics_epoch: int | None = None) -> None:
    """`metrics_epoch`: the epoch whose weights are kept (early stopping restored them), whose
    metrics then become the job's, so that they describe the weights that are served."""
    with attempt.write() as (session, job):
        if weights is not None:
            save_weights(session, job.id, weights)
        restored = metrics_of_epoch(session, job.id, metrics_epoch) if metrics_epoch is not None else None
        if restored is not None:
            job.metrics, job.metrics_epoch = restored, metrics_epoch
        job.status, job.stop_reason, job.error, job.finished_at = status, stop_reason, error, utcnow()
        session.execute(delete(Checkpoint).where(Checkpoint.job_id == job.id))
    JOBS_FINISHED.labels(status).inc()


def run_job(sessions: sessionmaker[Session], job_id: str, worker: str = "worker",
            settings: Settings | None = None, hand_back: Callable[[], bool] | None = None) -> bool:
    """Claim and train the job. Returns True when it went back to the queue -- handed back
    because `hand_back()` turned true (the worker is shutting down), or after the database
    failed under it: the caller sends it again."""
    settings = settings or load_settings()
    token = job_id_var.set(job_id)
    try:
        return _run(sessions, job_id, worker, settings, hand_back)
    finally:
        job_id_var.reset(token)


def _run(sessions: sessionmaker[Session], job_id: str, worker: str, settings: Settings,
         hand_back: Callable[[], bool] | None) -> bool:
    claim = _claim(sessions, job_id, worker, settings)
    if claim is None:
        return False
    attempt = Attempt(sessions, job_id, claim.attempt)
    log.info("job %s attempt %d running on %s%s", job_id, claim.attempt, worker,
             " (resuming from a checkpoint)" if claim.checkpoint else "")
    writer = EpochWriter(attempt, settings)
    monitor = Monitor(attempt, settings, claim.trained_seconds, hand_back)
    try:
        monitor.start()  # the heartbeat covers reading the data too
        try:
            x, y, start_weights = _load(sessions, claim)
            net = Network.from_spec(claim.model_spec, seed=claim.training_spec["seed"])
            if start_weights:  # fine-tuning: backpropagation continues from the parent's weights
                net.set_weights(start_weights)
            net.freeze(claim.freeze or [])
            trainer = Trainer(net, claim.training_spec)
            if claim.checkpoint:
                arrays, meta = arrays_from_npz(claim.checkpoint)
                trainer.load_state(meta, arrays)
                writer.restored_weights = weights_in_state(arrays)  # kept if stopped before another epoch ends
            result = trainer.fit(x, y, on_epoch=writer.on_epoch, should_stop=monitor.should_stop)
        finally:
            monitor.stop()
        if monitor.reason == "superseded":
            raise Superseded(job_id)
        # what stopped the run, if the monitor did; a run that ended on its own was stopped by
        # nothing, whatever the heartbeat found after that (the time limit passing during the
        # last epoch's writes)
        stopped_by = monitor.reason if result.stop_reason == "cancelled" else None
        if stopped_by == "handed back":
            if _hand_back(attempt):
                log.info("job %s attempt %d handed back: the worker is shutting down", job_id, claim.attempt)
                return True
            stopped_by = None  # cancelled meanwhile: it ends here, as cancelled (below)
        writer.flush()
        if stopped_by == "time limit":
            _finish(attempt, JobStatus.FAILED, weights=writer.last_weights, stop_reason="time limit",
                    error=f"time limit: the job ran longer than {settings.job_time_limit:g} s "
                          f"(BACKPROP_JOB_TIME_LIMIT) and was stopped after epoch {trainer.epoch}")
        elif result.stop_reason == "cancelled":
            # keep the weights of the last finished epoch, not a half-trained one
            _finish(attempt, JobStatus.CANCELLED, weights=writer.last_weights, stop_reason="cancelled")
        else:
            _finish(attempt, JobStatus.SUCCEEDED, weights=net.get_weights(), stop_reason=result.stop_reason,
                    metrics_epoch=result.restored_epoch)
        log.info("job %s ended: %s", job_id, stopped_by or result.stop_reason)
    except Superseded:
        log.warning("job %s attempt %d was superseded; stopped without writing", job_id, claim.attempt)
    except (TrainingDiverged, SpecError, ValueError) as exc:
        _fail(attempt, writer, str(exc))
        log.warning("job %s failed: %s", job_id, exc)
    except MemoryError as exc:  # past what the API's estimate allowed (BACKPROP_MAX_BATCH_MB)
        _fail(attempt, writer, f"out of memory: {exc}; try a smaller batch_size or network")
        log.warning("job %s ran out of memory: %s", job_id, exc)
    except OperationalError as exc:
        # The database failed under the run (locked past its timeout, restarted, unreachable):
        # not the job's fault, so it does not end the job. It is queued again, counted as an
        # attempt (BACKPROP_MAX_ATTEMPTS bounds a failure that keeps coming back), to resume
        # from its checkpoint; if even that write fails, its heartbeat goes stale and the
        # reconciler queues it, as after a lost worker.
        log.exception("job %s attempt %d: the database failed; the job is queued again", job_id, claim.attempt)
        if not _queue_again(attempt, exc):
            return False
        _wait_before_sending(claim.attempt, settings, hand_back)
        return True
    except Exception as exc:
        log.exception("job %s crashed", job_id)
        _fail(attempt, writer, f"internal error: {_describe(exc)}")
    return False


def _describe(exc: Exception) -> str:
    """The class and message, for the job's error; a database error by its driver's first line
    only, without the statement, parameters and links SQLAlchemy and the driver add (they stay
    in the worker's log)."""
    if isinstance(exc, StatementError) and exc.orig is not None:
        orig = exc.orig
        diag = getattr(orig, "diag", None)  # psycopg: its message without LINE / CONTEXT parts
        message = getattr(diag, "message_primary", None) or str(orig).split("\n", 1)[0]
        return f"database error: {orig.__class__.__name__}: {message}"
    return f"{exc.__class__.__name__}: {exc}"


def _queue_again(attempt: Attempt, exc: Exception) -> bool:
    """Back to the queue, the attempt counted (unlike _hand_back), with the database's error as
    the job's until an attempt ends it (the attempt limit's message quotes it); False when the
    database cannot take even that."""
    try:
        with attempt.write() as (_session, job):
            job.status, job.heartbeat_at, job.worker = JobStatus.QUEUED, None, None
            job.error = f"queued again after {_describe(exc)}"
            # as good as sent: the reconciler leaves it alone while the runner waits to send it
            # (_wait_before_sending); it sent a job whose last send was over a minute old at once
            job.enqueued_at = utcnow()
    except Superseded:
        return False
    except Exception:  # noqa: BLE001 - still down: the reconciler finds the stale heartbeat
        log.warning("job %s could not be queued again; the reconciler will", attempt.job_id, exc_info=True)
        return False
    return True


def _wait_before_sending(attempt: int, settings: Settings, shutting_down: Callable[[], bool] | None) -> None:
    """Sent again at once, a job took all its attempts in 50 ms of a one-second database outage.
    A warm shutdown cuts the wait short: the job is then sent to another worker at once. At most
    a minute, and never past when the reconciler would send it (BACKPROP_REQUEUE_AFTER_SECONDS)."""
    wait = min(DATABASE_RETRY_SECONDS * 2 ** (attempt - 1), 60, settings.requeue_after_seconds)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and not (shutting_down and shutting_down()):
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def _hand_back(attempt: Attempt) -> bool:
    """Queued again, to resume from the last checkpoint (the epochs after it are trained
    again, as after a crash). A handed-back run does not count against BACKPROP_MAX_ATTEMPTS,
    which is there for workers that are lost. Not when a cancel came in since the monitor last
    looked (False): queued again, the cancel would end it with its checkpoint only, dropping
    the epochs trained since and their weights."""
    with attempt.write() as (_session, job):
        if job.cancel_requested:
            return False
        job.status, job.heartbeat_at, job.worker = JobStatus.QUEUED, None, None
        job.attempts -= 1
    return True


def _fail(attempt: Attempt, writer: EpochWriter, error: str) -> None:
    try:
        try:
            writer.flush()
        except Superseded:
            raise
        except Exception:  # noqa: BLE001 - the writes are what failed: record why without them
            log.warning("job %s: its last epochs could not be written", attempt.job_id, exc_info=True)
            writer.pending = []
        _finish(attempt, JobStatus.FAILED, error=error, stop_reason="error")
    except Superseded:
        log.warning("job %s attempt %d was superseded while failing", attempt.job_id, attempt.number)
