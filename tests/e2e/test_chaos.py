"""Chaos: two worker processes on Redis + PostgreSQL train ten jobs while workers are SIGKILLed
at random moments and Redis is restarted (losing every queued message). Every job must still
end `succeeded`, with each epoch recorded exactly once, and final weights bit-identical to an
uninterrupted run of the engine."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import time

import pytest

from tests.data import iris_job

from .stack import Stack, assert_like_uninterrupted_runs, free_port

pytestmark = pytest.mark.e2e

JOBS = 10
EPOCHS = 3000


class PrivateRedis:
    """A Redis of the test's own, so restarting it disturbs nothing else on the machine."""

    def __init__(self, tmp):
        self.port = free_port()
        self.tmp = tmp
        self.proc = None

    def start(self):
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is needed for the chaos test")
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.tmp)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:  # until it answers (after a restart, nothing else would notice it did not)
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                assert self.proc.poll() is None, f"redis-server exited (port {self.port} taken?)"
                assert time.monotonic() < deadline, "redis-server did not answer within 10 s"
                time.sleep(0.05)
        client.close()
        return self

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def chaos_stack(tmp_path, postgres_url):
    redis = PrivateRedis(tmp_path).start()
    stack = Stack(tmp_path, {
        "BACKPROP_DATABASE_URL": postgres_url, "BACKPROP_BROKER_URL": redis.url,
        "BACKPROP_BLAS_THREADS": "1", "BACKPROP_HEARTBEAT_SECONDS": "0.3", "BACKPROP_STALE_AFTER_SECONDS": "2",
        "BACKPROP_RECONCILE_SECONDS": "1", "BACKPROP_REQUEUE_AFTER_SECONDS": "3",
        "BACKPROP_CHECKPOINT_SECONDS": "0.5", "BACKPROP_MAX_ATTEMPTS": "20",
    })
    try:
        yield stack.up(workers=2), redis, postgres_url
    finally:
        stack.down()
        redis.kill()


def test_jobs_survive_killed_workers_and_a_redis_restart(chaos_stack):
    stack, redis, db_url = chaos_stack
    rng = random.Random(7)
    ids = []
    for i in range(JOBS):
        status, job = stack.request("POST", "/v1/jobs", iris_job(epochs=EPOCHS, seed=i, validation_split=0.2))
        assert status == 202, job
        ids.append(job["id"])

    kills = 0
    redis_restarted = False
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        _, page = stack.request("GET", "/v1/jobs?limit=50")
        statuses = [j["status"] for j in page["jobs"]]
        if all(s in ("succeeded", "failed", "cancelled") for s in statuses):
            break
        time.sleep(rng.uniform(0.8, 1.8))
        if kills < 5:
            victim = rng.choice([n for n in stack.procs if n.startswith("worker")])
            stack.stop(victim, sig=signal.SIGKILL)
            stack.start(victim, "worker")
            kills += 1
        elif not redis_restarted:
            redis.kill()
            time.sleep(1)
            redis.start()
            redis_restarted = True
    assert kills == 5 and redis_restarted, f"jobs finished before the chaos ended ({kills} kills)"

    jobs = {j: stack.wait_for_job(j, timeout=max(5.0, deadline - time.monotonic())) for j in ids}
    assert all(j["status"] == "succeeded" for j in jobs.values()), (
        {k: (v["status"], v["error"]) for k, v in jobs.items()}, stack.logs())
    assert any(j["attempts"] > 1 for j in jobs.values()), "no job was ever interrupted"

    assert_like_uninterrupted_runs(db_url, ids, EPOCHS)
