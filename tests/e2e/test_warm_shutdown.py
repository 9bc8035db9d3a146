"""A worker's warm shutdown (SIGTERM to Celery's main process, what `docker stop` sends) hands
its running job back: the worker exits within seconds instead of waiting for the job, the job is
queued again at once rather than after its heartbeat goes stale, and the next worker finishes it
from the last checkpoint, every epoch recorded once and the weights those of an uninterrupted
run. Against real PostgreSQL and Redis, with the processes docker-compose runs."""

from __future__ import annotations

import signal
import time

import pytest

from tests.data import iris_job

from .stack import Stack, assert_like_uninterrupted_runs

pytestmark = pytest.mark.e2e

EPOCHS = 4000
STALE_AFTER = 60  # without the hand-back, a new worker would wait this long to take the job over


def test_warm_shutdown_hands_the_running_job_back(tmp_path, postgres_url, redis_url):
    stack = Stack(tmp_path, {
        "BACKPROP_DATABASE_URL": postgres_url, "BACKPROP_BROKER_URL": redis_url,
        "BACKPROP_BLAS_THREADS": "1", "BACKPROP_CHECKPOINT_SECONDS": "0.2",
        "BACKPROP_STALE_AFTER_SECONDS": str(STALE_AFTER),
    }).up()
    try:
        status, job = stack.request("POST", "/v1/jobs", iris_job(epochs=EPOCHS, seed=5, validation_split=0.2))
        assert status == 202, job
        job_id = job["id"]
        deadline = time.monotonic() + 60
        while stack.request("GET", f"/v1/jobs/{job_id}")[1]["progress"]["epoch"] < 200:
            assert time.monotonic() < deadline, stack.logs()
            time.sleep(0.05)

        worker = stack.procs.pop("worker0")
        signalled = time.monotonic()
        worker.send_signal(signal.SIGTERM)  # the main process only, as `docker stop` does
        worker.wait(timeout=20)
        assert time.monotonic() - signalled < 10, "the warm shutdown waited for the job"
        _, handed = stack.request("GET", f"/v1/jobs/{job_id}")
        assert handed["status"] == "queued", (handed, stack.logs())
        assert handed["attempts"] == 0 and handed["worker"] is None  # not counted as a lost worker
        assert 0 < handed["progress"]["epoch"] < EPOCHS

        stack.start("worker1", "worker")
        restarted = time.monotonic()
        done = stack.wait_for_job(job_id, timeout=STALE_AFTER - 15)
        assert done["status"] == "succeeded", (done, stack.logs())
        assert time.monotonic() - restarted < STALE_AFTER - 15
        assert done["attempts"] == 1
        assert "handed back" in (tmp_path / "worker0.log").read_text()
    finally:
        stack.down()

    assert_like_uninterrupted_runs(postgres_url, [job_id], EPOCHS)
