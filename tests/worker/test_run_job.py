"""The worker's job runner against a real SQLite database: terminal states and their reasons,
checkpoint -> resume, fencing of stale attempts, attempt limits, time limits, cancellation."""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import func, select, update

from core.db import Checkpoint, EpochRecord, Job, WeightArray
from core.db.models import utcnow
from core.nn import Network, Trainer
from core.store import dataset_arrays, latest_checkpoint, load_weights
from tests.data import iris_job
from worker import training
from worker.training import run_job


class WorkerDied(BaseException):
    """Stands in for SIGKILL: escapes every `except Exception` in the runner, like a dead process."""


@pytest.fixture
def fast(migrated):
    return dataclasses.replace(migrated, heartbeat_seconds=0.02, stale_after_seconds=0.5)


def submit(client, body) -> str:
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["id"]


def epochs_of(sessions, job_id) -> list[int]:
    with sessions() as s:
        return list(s.scalars(select(EpochRecord.epoch).where(EpochRecord.job_id == job_id)
                              .order_by(EpochRecord.epoch)))


def reference_weights(sessions, job_id) -> dict[str, np.ndarray]:
    """The same job trained by the engine alone, uninterrupted."""
    with sessions() as s:
        job = s.get(Job, job_id)
        x, y = dataset_arrays(job.dataset)
        spec, training_spec = job.model_spec, job.training_spec
    net = Network.from_spec(spec, seed=training_spec["seed"])
    Trainer(net, training_spec).fit(x, y)
    return net.get_weights()


def test_diverging_job_fails_naming_the_epoch(client, sessions, fast):
    job_id = submit(client, iris_job(epochs=20, optimizer={"type": "sgd", "learning_rate": 1e30}))
    run_job(sessions, job_id, settings=fast)
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "failed"
    assert "non-finite" in job["error"] and "epoch 1" in job["error"]
    assert job["finished_at"]


def test_a_job_queued_before_the_storage_limit_counts_its_bound_once_started(client, sessions, fast):
    """Migration 0009 counts a finished job at what it holds; a queued one, which holds nothing
    yet, would have counted 0 for good: its bound is set when a worker takes it."""
    job_id = submit(client, iris_job(epochs=3))
    with sessions.begin() as s:
        bound = s.get(Job, job_id).storage_bytes
        s.get(Job, job_id).storage_bytes = None  # as migration 0009 leaves a queued job
    run_job(sessions, job_id, settings=fast)
    with sessions() as s:
        assert s.get(Job, job_id).storage_bytes == bound
        stored = s.scalar(select(func.sum(func.length(WeightArray.data))).where(WeightArray.job_id == job_id))
        assert 0 < stored < bound


def test_redelivered_message_for_a_finished_job_does_nothing(client, sessions, fast):
    job_id = submit(client, iris_job(epochs=3))
    run_job(sessions, job_id, settings=fast)
    run_job(sessions, job_id, settings=fast)
    with sessions() as s:
        assert s.get(Job, job_id).attempts == 1
        assert latest_checkpoint(s, job_id) is None  # dropped once the job ended
    assert epochs_of(sessions, job_id) == [1, 2, 3]


def crashed_at_8(client, sessions, fast, monkeypatch, checkpoints=True, **training_spec) -> str:
    """A job whose worker died during epoch 8, after writing epochs 1..8, the last checkpoint at
    epoch 5 (none if `checkpoints` is false); it is left `running`, its heartbeat fresh."""
    job_id = submit(client, iris_job(epochs=12, validation_split=0.2, **training_spec))
    monkeypatch.setattr(training, "FLUSH_SECONDS", 0.0)  # every epoch written as soon as it ends
    original = training.EpochWriter.on_epoch

    def on_epoch(self, record, trainer):
        checkpoint_now = checkpoints and record["epoch"] <= 5
        self.settings = dataclasses.replace(fast, checkpoint_seconds=0.0 if checkpoint_now else 1e9)
        original(self, record, trainer)
        if record["epoch"] == 8:
            raise WorkerDied

    monkeypatch.setattr(training.EpochWriter, "on_epoch", on_epoch)
    with pytest.raises(WorkerDied):
        run_job(sessions, job_id, settings=fast)
    monkeypatch.setattr(training.EpochWriter, "on_epoch", original)
    return job_id


def make_heartbeat_stale(sessions) -> None:
    """As a dead worker's heartbeat becomes: the next claim takes the job over."""
    with sessions.begin() as s:
        s.execute(update(Job).values(heartbeat_at=utcnow() - timedelta(seconds=60)))


def test_crash_then_resume_from_checkpoint_matches_an_uninterrupted_run(client, sessions, fast, monkeypatch):
    job_id = crashed_at_8(client, sessions, fast, monkeypatch, optimizer={"type": "adam", "learning_rate": 0.01})
    assert epochs_of(sessions, job_id) == list(range(1, 9))
    with sessions() as s:
        assert latest_checkpoint(s, job_id).epoch == 5
        # each checkpoint replaced the one before
        assert s.scalar(select(func.count()).select_from(Checkpoint).where(Checkpoint.job_id == job_id)) == 1
        assert s.get(Job, job_id).status == "running"

    run_job(sessions, job_id, settings=fast)  # heartbeat is fresh: a duplicate, not a takeover
    with sessions() as s:
        assert s.get(Job, job_id).attempts == 1
    make_heartbeat_stale(sessions)
    run_job(sessions, job_id, settings=fast)  # the dead worker's heartbeat is stale: resume

    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "succeeded" and job["attempts"] == 2
    assert epochs_of(sessions, job_id) == list(range(1, 13))  # exactly one row per epoch
    with sessions() as s:
        final = load_weights(s, job_id)
    expected = reference_weights(sessions, job_id)
    assert final.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(final[name], expected[name], err_msg=name)


def test_stale_attempt_stops_without_writing(client, sessions, fast, monkeypatch):
    job_id = submit(client, iris_job(epochs=50))
    original = training.EpochWriter.on_epoch

    def on_epoch(self, record, trainer):
        if record["epoch"] == 3:  # meanwhile another worker claimed the job (attempt 2)
            with sessions.begin() as s:
                s.execute(update(Job).where(Job.id == job_id).values(attempts=Job.attempts + 1))
        original(self, record, trainer)

    monkeypatch.setattr(training, "FLUSH_SECONDS", 0.0)
    monkeypatch.setattr(training.EpochWriter, "on_epoch", on_epoch)
    run_job(sessions, job_id, settings=fast)
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job.status == "running" and job.attempts == 2
        assert load_weights(s, job_id) == {}
    assert epochs_of(sessions, job_id) == [1, 2]  # nothing from epoch 3 on


def finished_count(status: str) -> float:
    from core.metrics import JOBS_FINISHED

    return JOBS_FINISHED.labels(status)._value.get()


def test_job_that_keeps_losing_its_worker_fails_after_max_attempts(client, sessions, fast):
    job_id = submit(client, iris_job(epochs=5))
    with sessions.begin() as s:
        s.execute(update(Job).values(status="running", attempts=fast.max_attempts,
                                     heartbeat_at=utcnow() - timedelta(seconds=60)))
    failed = finished_count("failed")
    run_job(sessions, job_id, settings=fast)
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "failed"
    assert f"gave up after {fast.max_attempts} attempts" in job["error"]
    assert "the last attempt" not in job["error"]  # no database error to quote
    assert finished_count("failed") == failed + 1  # counted: the jobs to alert on


def test_a_job_the_database_keeps_failing_gives_up_quoting_its_error(client, sessions, fast, monkeypatch):
    import sqlite3

    from sqlalchemy.exc import OperationalError

    job_id = submit(client, iris_job(epochs=5))

    def add_epochs(session, job, records):
        raise OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))

    monkeypatch.setattr(training, "FLUSH_SECONDS", 0.0)
    monkeypatch.setattr(training, "add_epochs", add_epochs)
    runs = 0
    while run_job(sessions, job_id, settings=fast):  # as the task does: sent again while queued again
        runs += 1
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert runs == fast.max_attempts and job["status"] == "failed", job
    assert job["error"].endswith("; the last attempt was queued again after database error: OperationalError: "
                                 "database or disk is full"), job["error"]


def test_time_limit_fails_the_job(client, sessions, fast):
    job_id = submit(client, iris_job(epochs=100000))
    run_job(sessions, job_id, settings=dataclasses.replace(fast, job_time_limit=0.3))
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "failed" and job["stop_reason"] == "time limit"
    assert job["error"].startswith("time limit")
    assert client.get(f"/v1/jobs/{job_id}/weights").status_code == 200


def test_cancel_requested_before_start(client, sessions, fast):
    job_id = submit(client, iris_job(epochs=3))
    with sessions.begin() as s:
        s.get(Job, job_id).cancel_requested = True
    cancelled = finished_count("cancelled")
    run_job(sessions, job_id, settings=fast)
    assert client.get(f"/v1/jobs/{job_id}").get_json()["status"] == "cancelled"
    assert finished_count("cancelled") == cancelled + 1


def test_cancel_during_training_keeps_last_finished_epoch(client, sessions, fast, monkeypatch):
    job_id = submit(client, iris_job(epochs=100000))
    original = training.EpochWriter.on_epoch

    def on_epoch(self, record, trainer):
        original(self, record, trainer)
        if record["epoch"] == 5:
            assert client.post(f"/v1/jobs/{job_id}/cancel").get_json()["status"] == "cancelling"

    monkeypatch.setattr(training.EpochWriter, "on_epoch", on_epoch)
    run_job(sessions, job_id, settings=fast)
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "cancelled" and 5 <= job["progress"]["epoch"] < 100000
    last = client.get(f"/v1/jobs/{job_id}/epochs?after={job['progress']['epoch'] - 1}").get_json()["epochs"][-1]
    weights = client.get(f"/v1/jobs/{job_id}/weights?format=npz")
    assert weights.status_code == 200
    stored = client.get(f"/v1/jobs/{job_id}/weights").get_json()["weights"]
    norm = np.sqrt(sum(np.sum(np.square(w["values"])) for w in stored if w["layer"] == "dense_0"))
    assert norm == pytest.approx(last["weight_norms"]["dense_0"], rel=1e-5)  # the last finished epoch's


def test_missing_job_is_dropped(sessions, fast):
    run_job(sessions, "0" * 32, settings=fast)  # no exception, nothing written
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0


def test_cancel_is_seen_by_epoch_writes_without_waiting_for_a_heartbeat(client, sessions, migrated, monkeypatch):
    slow_heartbeat = dataclasses.replace(migrated, heartbeat_seconds=600)
    job_id = submit(client, iris_job(epochs=100000))
    original = training.EpochWriter.on_epoch

    def on_epoch(self, record, trainer):
        original(self, record, trainer)
        if record["epoch"] == 5:
            client.post(f"/v1/jobs/{job_id}/cancel")

    monkeypatch.setattr(training.EpochWriter, "on_epoch", on_epoch)
    run_job(sessions, job_id, settings=slow_heartbeat)
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "cancelled"
    assert job["progress"]["epoch"] < 5000  # stopped at the next write (<= 0.25 s), not at epoch 100000


def test_fine_tuning_from_a_job_whose_weights_are_gone_fails_instead_of_starting_fresh(client, sessions, fast):
    parent = submit(client, iris_job(epochs=2))
    run_job(sessions, parent, settings=fast)
    child = submit(client, {**iris_job(epochs=2), "init_from": parent})
    with sessions.begin() as s:
        s.execute(WeightArray.__table__.delete().where(WeightArray.job_id == parent))
    run_job(sessions, child, settings=fast)
    job = client.get(f"/v1/jobs/{child}").get_json()
    assert job["status"] == "failed" and "no stored weights" in job["error"]


def test_two_workers_claiming_at_once_get_one_attempt_between_them(client, sessions, fast, monkeypatch):
    """A duplicate message delivered to two idle workers at the same moment: one claim wins."""
    import threading

    from core import store

    job_id = submit(client, iris_job(epochs=2))
    barrier = threading.Barrier(2, timeout=10)
    loading = store.dataset_arrays

    def slow_load(ds):  # both claims are inside their transaction at the same time
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        return loading(ds)

    monkeypatch.setattr(training, "dataset_arrays", slow_load)
    barrier_timeout = threading.Timer(3, barrier.abort)
    barrier_timeout.start()
    claims = []
    patient = dataclasses.replace(fast, stale_after_seconds=60)  # the first claim's heartbeat stays fresh
    threads = [threading.Thread(target=lambda: claims.append(training._claim(sessions, job_id, "w", patient)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    barrier_timeout.cancel()
    assert sum(c is not None for c in claims) == 1
    with sessions() as s:
        assert s.get(Job, job_id).attempts == 1


def test_a_job_handed_back_at_shutdown_is_queued_uncounted_and_resumes_exactly(client, sessions, fast):
    """`hand_back()` turns true when the worker starts shutting down: the job stops at its next
    batch and is queued again, without counting as an attempt; the next run resumes it from the
    last checkpoint and ends with the weights of an uninterrupted run."""
    fast = dataclasses.replace(fast, checkpoint_seconds=0.0)  # a checkpoint after every epoch
    job_id = submit(client, iris_job(epochs=12, validation_split=0.2))
    calls = []

    def shutting_down() -> bool:  # asked once per batch; true from the 30th batch on
        calls.append(1)
        return len(calls) >= 30

    assert run_job(sessions, job_id, settings=fast, hand_back=shutting_down) is True
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "queued" and job["attempts"] == 0 and job["worker"] is None
    with sessions() as s:
        assert 0 < latest_checkpoint(s, job_id).epoch < 12
    assert run_job(sessions, job_id, settings=fast) is False
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "succeeded" and job["attempts"] == 1
    assert epochs_of(sessions, job_id) == list(range(1, 13))
    with sessions() as s:
        stored = load_weights(s, job_id)
    for name, expected in reference_weights(sessions, job_id).items():
        np.testing.assert_array_equal(stored[name], expected, err_msg=name)


def test_restored_best_weights_come_with_that_epochs_metrics(client, sessions, fast):
    """With early stopping and restore_best_weights the served weights are the best epoch's; the
    job's metrics describe those weights, not the last epoch's."""
    # nothing improves on epoch 1 by 10: early stopping ends epoch 4 and restores epoch 1
    early = {"monitor": "loss", "patience": 2, "min_delta": 10.0, "restore_best_weights": True}
    job_id = submit(client, iris_job(epochs=50, validation_split=0.2, early_stopping=early))
    run_job(sessions, job_id, settings=fast)
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "succeeded" and job["stop_reason"] == "early_stopping"
    epochs = client.get(f"/v1/jobs/{job_id}/epochs").get_json()["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert job["metrics"]["loss"] == epochs[0]["loss"] != epochs[-1]["loss"]
    assert job["metrics"]["val_accuracy"] == epochs[0]["val_accuracy"]
    assert job["metrics_epoch"] == 1  # says which epoch, where the curves run on to epoch 4


# -- a job stopped between or early in attempts keeps one consistent state ----------------------
# Status, progress, epoch history, metrics and weights must all describe the same epoch: the
# checkpoint's when the job stops before another epoch ends, none at all without a checkpoint.

def assert_describes_epoch(client, sessions, job_id, epoch: int) -> None:
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["progress"]["epoch"] == epoch and epochs_of(sessions, job_id) == list(range(1, epoch + 1))
    with sessions() as s:
        assert latest_checkpoint(s, job_id) is None
    weights = client.get(f"/v1/jobs/{job_id}/weights")
    if epoch == 0:
        assert job["metrics"] is None and job["metrics_epoch"] is None and weights.status_code == 409
        return
    assert job["metrics_epoch"] == epoch
    last = client.get(f"/v1/jobs/{job_id}/epochs").get_json()["epochs"][-1]
    assert job["metrics"]["loss"] == last["loss"] and job["metrics"]["val_loss"] == last["val_loss"]
    stored = weights.get_json()["weights"]
    norm = np.sqrt(sum(np.sum(np.square(w["values"])) for w in stored if w["layer"] == "dense_0"))
    assert norm == pytest.approx(last["weight_norms"]["dense_0"], rel=1e-5)


def test_a_resumed_attempt_cancelled_before_an_epoch_ends_keeps_the_checkpoint(client, sessions, fast,
                                                                                monkeypatch):
    job_id = crashed_at_8(client, sessions, fast, monkeypatch)
    make_heartbeat_stale(sessions)
    claim = training._claim

    def claim_then_cancel(*args):
        claimed = claim(*args)
        assert client.post(f"/v1/jobs/{job_id}/cancel").get_json()["status"] == "cancelling"
        return claimed

    monkeypatch.setattr(training, "_claim", claim_then_cancel)
    run_job(sessions, job_id, settings=fast)
    assert client.get(f"/v1/jobs/{job_id}").get_json()["status"] == "cancelled"
    assert_describes_epoch(client, sessions, job_id, 5)


def test_a_resumed_attempt_out_of_time_before_an_epoch_ends_keeps_the_checkpoint(client, sessions, fast,
                                                                                  monkeypatch):
    job_id = crashed_at_8(client, sessions, fast, monkeypatch)
    make_heartbeat_stale(sessions)
    with sessions.begin() as s:  # the five epochs it keeps used up the limit
        s.execute(update(EpochRecord).values(duration=1.0))
    run_job(sessions, job_id, settings=dataclasses.replace(fast, job_time_limit=5))
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "failed" and job["stop_reason"] == "time limit" and "after epoch 5" in job["error"]
    assert_describes_epoch(client, sessions, job_id, 5)


def test_time_spent_queued_does_not_count_against_the_time_limit(client, sessions, fast, monkeypatch):
    """The limit ran from the job's first start: handed back after 2 s of training, then queued
    15 s with no worker, it failed "ran longer than 15 s" within 30 ms of resuming, having
    trained 2 s. It bounds the time trained, summed over attempts."""
    job_id = crashed_at_8(client, sessions, fast, monkeypatch)
    make_heartbeat_stale(sessions)
    with sessions.begin() as s:  # started an hour ago; its five kept epochs trained 1 s each
        s.execute(update(Job).values(started_at=utcnow() - timedelta(hours=1)))
        s.execute(update(EpochRecord).values(duration=1.0))
    run_job(sessions, job_id, settings=dataclasses.replace(fast, job_time_limit=60))
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "succeeded" and job["attempts"] == 2, job


@pytest.mark.parametrize("checkpoints", [True, False], ids=["checkpoint", "no checkpoint"])
def test_cancel_seen_at_claim_keeps_the_checkpoint_or_nothing(client, sessions, fast, monkeypatch, checkpoints):
    job_id = crashed_at_8(client, sessions, fast, monkeypatch, checkpoints)
    make_heartbeat_stale(sessions)
    assert client.post(f"/v1/jobs/{job_id}/cancel").get_json()["status"] == "cancelling"
    run_job(sessions, job_id, settings=fast)  # the reconciler's re-send, after the worker died
    assert client.get(f"/v1/jobs/{job_id}").get_json()["status"] == "cancelled"
    assert_describes_epoch(client, sessions, job_id, 5 if checkpoints else 0)


def test_a_handed_back_job_cancelled_while_queued_keeps_its_checkpoint(client, sessions, fast):
    fast = dataclasses.replace(fast, checkpoint_seconds=0.0)
    job_id = submit(client, iris_job(epochs=12, validation_split=0.2))
    calls = []
    assert run_job(sessions, job_id, settings=fast, hand_back=lambda: calls.append(1) or len(calls) >= 30)
    with sessions() as s:
        checkpoint = latest_checkpoint(s, job_id).epoch
    resp = client.post(f"/v1/jobs/{job_id}/cancel")
    assert resp.status_code == 202 and resp.get_json()["status"] == "cancelled"
    assert_describes_epoch(client, sessions, job_id, checkpoint)
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409


def test_a_cancel_that_comes_as_the_worker_shuts_down_ends_the_job_cancelled(client, sessions, fast):
    """The shutdown is seen at the next batch, the cancel only at the next write: handing the job
    back anyway queued it again, and the cancel then ended it with its checkpoint alone, the
    epochs trained since and their weights dropped (or left it queued until a worker came)."""
    fast = dataclasses.replace(fast, checkpoint_seconds=3600.0)  # no checkpoint after the first
    job_id = submit(client, iris_job(epochs=12, validation_split=0.2))
    calls = []

    def shutting_down() -> bool:
        calls.append(1)
        if len(calls) == 30:  # a cancel lands just before the shutdown is seen
            assert client.post(f"/v1/jobs/{job_id}/cancel").get_json()["status"] == "cancelling"
        return len(calls) >= 30

    assert run_job(sessions, job_id, settings=fast, hand_back=shutting_down) is False
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "cancelled" and job["attempts"] == 1 and job["progress"]["epoch"] >= 2, job
    assert_describes_epoch(client, sessions, job_id, job["progress"]["epoch"])


def test_a_job_whose_epochs_cannot_be_written_fails_saying_why(client, sessions, fast, monkeypatch):
    """Failing the job flushed the same epochs again, the error escaped, and the job stayed
    running with no reason until the reconciler gave up on it as lost."""
    job_id = submit(client, iris_job(epochs=30))
    real = training.add_epochs

    def add_epochs(session, job, records):
        if any(r["epoch"] >= 3 for r in records):
            raise RuntimeError("disk full")
        real(session, job, records)

    monkeypatch.setattr(training, "add_epochs", add_epochs)
    assert run_job(sessions, job_id, settings=fast) is False
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "failed" and job["error"] == "internal error: RuntimeError: disk full", job


def test_a_database_failure_mid_run_queues_the_job_again_counted(client, sessions, fast, monkeypatch):
    """A database locked past its timeout at epoch 3 failed the job for good, with the SQL
    statement in its error. It is queued again (the attempt counted), and the next attempt
    finishes it."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    job_id = submit(client, iris_job(epochs=6))
    real, failures = training.add_epochs, []

    def add_epochs(session, job, records):
        if not failures and any(r["epoch"] >= 3 for r in records):
            failures.append(1)
            raise OperationalError("BEGIN IMMEDIATE", {}, sqlite3.OperationalError("database is locked"))
        real(session, job, records)

    monkeypatch.setattr(training, "FLUSH_SECONDS", 0.0)
    monkeypatch.setattr(training, "add_epochs", add_epochs)
    assert run_job(sessions, job_id, settings=fast) is True  # the caller sends it again
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "queued" and job["attempts"] == 1, job
    assert job["error"] == "queued again after database error: OperationalError: database is locked"
    assert run_job(sessions, job_id, settings=fast) is False
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "succeeded" and job["attempts"] == 2 and job["error"] is None, job
    assert epochs_of(sessions, job_id) == [1, 2, 3, 4, 5, 6]


def test_a_job_queued_again_after_a_database_error_waits_unless_the_worker_stops(client, sessions, fast,
                                                                                 monkeypatch):
    """Sent again at once, the job took every attempt within 50 ms of a one-second outage (twice
    in a reviewer's runs on PostgreSQL). It waits DATABASE_RETRY_SECONDS, doubled per attempt;
    a warm shutdown cuts the wait short, and the job goes to another worker at once."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    real, failures = training.add_epochs, []

    def add_epochs(session, job, records):
        if any(r["epoch"] >= 2 for r in records) and len(failures) < 2:
            failures.append(1)
            raise OperationalError("BEGIN IMMEDIATE", {}, sqlite3.OperationalError("database is locked"))
        real(session, job, records)

    monkeypatch.setattr(training, "FLUSH_SECONDS", 0.0)
    monkeypatch.setattr(training, "add_epochs", add_epochs)
    monkeypatch.setattr(training, "DATABASE_RETRY_SECONDS", 0.3)
    job_id = submit(client, iris_job(epochs=4))
    started = time.monotonic()
    assert run_job(sessions, job_id, settings=fast) is True
    assert time.monotonic() - started >= 0.3  # attempt 1: the base wait
    started = time.monotonic()
    assert run_job(sessions, job_id, settings=fast) is True
    assert time.monotonic() - started >= 0.6  # attempt 2: twice it

    monkeypatch.setattr(training, "DATABASE_RETRY_SECONDS", 3600.0)  # waits 60 s at most
    failures.clear()  # and no longer than the reconciler would take to send it
    job_id = submit(client, iris_job(epochs=4))
    started = time.monotonic()
    assert run_job(sessions, job_id, settings=dataclasses.replace(fast, requeue_after_seconds=0.5)) is True
    assert time.monotonic() - started < 30
    failures.clear()
    job_id = submit(client, iris_job(epochs=4))
    with sessions.begin() as s:  # sent long ago: the reconciler would send it again at once
        s.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow() - timedelta(hours=1)))
    started = time.monotonic()
    assert run_job(sessions, job_id, settings=fast, hand_back=lambda: bool(failures)) is True
    assert time.monotonic() - started < 30  # not the minute: the shutdown ended the wait
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "queued" and job["error"].startswith("queued again after database error"), job
    with sessions() as s:  # marked as sent: the reconciler leaves it to the runner meanwhile
        assert utcnow() - s.scalar(select(Job.enqueued_at).where(Job.id == job_id)) < timedelta(seconds=30)


def test_a_database_error_that_fails_a_job_leaves_its_sql_in_the_log(client, sessions, fast, monkeypatch):
    import sqlite3

    from sqlalchemy.exc import IntegrityError

    job_id = submit(client, iris_job(epochs=4))

    def add_epochs(session, job, records):
        raise IntegrityError("INSERT INTO epochs (job_id, epoch) VALUES (?, ?)", ("x", 1),
                             sqlite3.IntegrityError("UNIQUE constraint failed: epochs.job_id"))

    monkeypatch.setattr(training, "FLUSH_SECONDS", 0.0)
    monkeypatch.setattr(training, "add_epochs", add_epochs)
    assert run_job(sessions, job_id, settings=fast) is False
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "failed", job
    assert job["error"] == "internal error: database error: IntegrityError: UNIQUE constraint failed: epochs.job_id"


def test_a_statement_error_that_fails_a_job_leaves_its_sql_and_detail_lines_in_the_log(client, sessions, fast,
                                                                                      monkeypatch):
    """Not every statement error is the driver's (a value SQLAlchemy cannot bind), and a
    driver's message can go on with the statement (PostgreSQL's "LINE 1: ..."): the error keeps
    the first line of the cause only."""
    from sqlalchemy.exc import StatementError

    job_id = submit(client, iris_job(epochs=4))

    def add_epochs(session, job, records):
        raise StatementError("(builtins.TypeError) no JSON", "UPDATE jobs SET metrics=? WHERE jobs.id = ?",
                             ({"x": "secret"}, "id"), TypeError("Object of type object is not JSON serializable\n"
                                                                "LINE 1: UPDATE jobs SET metrics = 'secret'"))

    monkeypatch.setattr(training, "FLUSH_SECONDS", 0.0)
    monkeypatch.setattr(training, "add_epochs", add_epochs)
    assert run_job(sessions, job_id, settings=fast) is False
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["error"] == "internal error: database error: TypeError: Object of type object is not JSON serializable"


def test_the_time_limit_passing_after_the_last_epoch_stops_nothing(client, sessions, fast, monkeypatch):
    """The heartbeat may see the deadline pass while the last epoch is being written: the run
    has ended on its own by then, and succeeds."""
    job_id = submit(client, iris_job(epochs=3))
    original = training.EpochWriter.on_epoch

    def on_epoch(self, record, trainer):
        original(self, record, trainer)
        if record["epoch"] == 3:
            time.sleep(2.0)  # a slow last write, past the limit; the heartbeat beats meanwhile

    monkeypatch.setattr(training.EpochWriter, "on_epoch", on_epoch)
    # a limit the three epochs stay well within, even on a loaded machine (0.3 s failed once in a
    # full run: the limit passed before the last epoch)
    run_job(sessions, job_id, settings=dataclasses.replace(fast, job_time_limit=1.5))
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "succeeded" and job["stop_reason"] == "completed", job


def test_a_worker_killed_while_reading_the_data_uses_up_an_attempt(client, sessions, fast, monkeypatch):
    """The attempt is committed before the dataset is read, so a job whose data kills its worker
    (out of memory) fails after BACKPROP_MAX_ATTEMPTS instead of being sent again forever."""
    job_id = submit(client, iris_job(epochs=3))

    def killed(*args):
        raise WorkerDied

    monkeypatch.setattr(training, "dataset_arrays", killed)
    for attempt in range(1, fast.max_attempts + 1):
        with pytest.raises(WorkerDied):
            run_job(sessions, job_id, settings=fast)
        with sessions() as s:
            assert s.get(Job, job_id).attempts == attempt
        make_heartbeat_stale(sessions)
    run_job(sessions, job_id, settings=fast)
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "failed" and f"gave up after {fast.max_attempts} attempts" in job["error"]


def test_a_job_out_of_memory_fails_saying_so(client, sessions, fast, monkeypatch):
    """Past what the API's estimate allows (a raised BACKPROP_MAX_BATCH_MB, a crowded machine),
    NumPy raises MemoryError: the job's reason says memory and what to change, not "internal
    error"."""
    job_id = submit(client, iris_job(epochs=3))

    def no_memory(self, x, y, sample_weight=None):
        raise MemoryError("Unable to allocate 64.0 GiB for an array with shape (32, 316, 316, 8192)")

    monkeypatch.setattr(Network, "train_step_gradients", no_memory)
    assert run_job(sessions, job_id, settings=fast) is False
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job.status == "failed"
        assert job.error.startswith("out of memory: Unable to allocate 64.0 GiB") and "smaller batch_size" in job.error


def test_the_heartbeat_moves_on_while_a_job_trains(client, sessions, fast, monkeypatch):
    """A job longer than BACKPROP_STALE_AFTER_SECONDS must not look lost: if the heartbeat
    stood still, the reconciler would send the job again, another worker would take it over,
    and after MAX_ATTEMPTS such takeovers it would fail. Every test job ends well within that
    time, so only this one watches the heartbeat move."""
    job_id = submit(client, iris_job(epochs=12))
    original = training.EpochWriter.on_epoch
    beats = []

    def on_epoch(self, record, trainer):
        time.sleep(0.05)  # 12 epochs of 50 ms: 0.6 s, past stale_after_seconds (0.5)
        with sessions() as s:
            beats.append(s.get(Job, job_id).heartbeat_at)
        original(self, record, trainer)

    monkeypatch.setattr(training.EpochWriter, "on_epoch", on_epoch)
    run_job(sessions, job_id, settings=fast)
    assert len(set(beats)) >= 6 and beats == sorted(beats)
    assert (beats[-1] - beats[0]).total_seconds() > 0.3
    assert client.get(f"/v1/jobs/{job_id}").get_json()["attempts"] == 1


def test_a_cancelled_job_whose_worker_was_lost_ends_cancelled_not_failed(client, sessions, fast):
    """A cancel that came while the job's worker was dying, on its last allowed attempt: the
    claim settles the cancel before it counts attempts."""
    job_id = submit(client, iris_job(epochs=5))
    with sessions.begin() as s:
        s.execute(update(Job).values(status="cancelling", cancel_requested=True, attempts=fast.max_attempts,
                                     heartbeat_at=utcnow() - timedelta(seconds=60)))
    run_job(sessions, job_id, settings=fast)
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "cancelled" and job["attempts"] == fast.max_attempts and job["error"] is None
