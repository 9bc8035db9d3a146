"""The worker's job runner against a real SQLite database: terminal states and their reasons."""

from __future__ import annotations

from sqlalchemy import func, select

from core.db import EpochRecord, Job
from tests.data import iris_job
from worker import training
from worker.training import run_job


def submit(client, body) -> str:
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["id"]


def test_diverging_job_fails_naming_the_epoch(client, sessions):
    job_id = submit(client, iris_job(epochs=20, optimizer={"type": "sgd", "learning_rate": 1e30}))
    run_job(sessions, job_id)
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "failed"
    assert "non-finite" in job["error"] and "epoch 1" in job["error"]
    assert job["finished_at"]


def test_redelivered_message_for_a_finished_job_does_nothing(client, sessions):
    job_id = submit(client, iris_job(epochs=3))
    run_job(sessions, job_id)
    run_job(sessions, job_id)
    with sessions() as s:
        assert s.get(Job, job_id).attempts == 1
        assert s.scalar(select(func.count()).select_from(EpochRecord).where(EpochRecord.job_id == job_id)) == 3


def test_cancel_requested_before_start(client, sessions):
    job_id = submit(client, iris_job(epochs=3))
    with sessions.begin() as s:
        s.get(Job, job_id).cancel_requested = True
    run_job(sessions, job_id)
    assert client.get(f"/v1/jobs/{job_id}").get_json()["status"] == "cancelled"


def test_cancel_during_training_keeps_last_finished_epoch(client, sessions, monkeypatch):
    job_id = submit(client, iris_job(epochs=500))
    monkeypatch.setattr(training, "CANCEL_POLL_SECONDS", 0.0)
    calls = {"n": 0}
    original = training.EpochWriter.on_epoch

    def on_epoch(self, record, trainer):
        original(self, record, trainer)
        calls["n"] += 1
        if calls["n"] == 5:  # a user cancels after the fifth epoch
            with sessions.begin() as s:
                s.get(Job, job_id).cancel_requested = True

    monkeypatch.setattr(training.EpochWriter, "on_epoch", on_epoch)
    run_job(sessions, job_id)
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "cancelled" and job["progress"]["epoch"] == 5
    weights = client.get(f"/v1/jobs/{job_id}/weights")
    assert weights.status_code == 200


def test_missing_job_is_dropped(sessions):
    run_job(sessions, "0" * 32)  # no exception, nothing written
