"""The Celery task around run_job, called in process (no broker)."""

from __future__ import annotations

import pytest


@pytest.fixture()
def tasks(monkeypatch, tmp_path):
    monkeypatch.setenv("BACKPROP_DATA_DIR", str(tmp_path))  # the module's settings, if imported here
    import worker.tasks as tasks

    sent: list[str] = []
    monkeypatch.setattr(tasks, "enqueue_training", lambda _celery, job_id: sent.append(job_id))
    monkeypatch.setattr(tasks, "sent", sent, raising=False)  # undone after the test, as the rest
    return tasks


def test_a_job_taken_while_the_worker_stops_is_sent_on_unclaimed(tasks, monkeypatch):
    """A job handed back during a warm shutdown was taken again by the same worker's idle pool
    process, claimed, its data read, and handed back at the first batch: twice in 0.1 s with the
    file queue. Taken while the worker stops, it is sent on without being claimed."""
    monkeypatch.setattr(tasks, "shutting_down", lambda: True)
    monkeypatch.setattr(tasks, "run_job", lambda *a, **k: pytest.fail("claimed while shutting down"))
    tasks.train_job("job-1")
    assert tasks.sent == ["job-1"]


def test_a_handed_back_job_is_sent_again_and_a_finished_one_is_not(tasks, monkeypatch):
    monkeypatch.setattr(tasks, "shutting_down", lambda: False)
    outcomes = iter([True, False])
    monkeypatch.setattr(tasks, "run_job", lambda *a, **k: next(outcomes))
    tasks.train_job("handed-back")
    tasks.train_job("finished")
    assert tasks.sent == ["handed-back"]
