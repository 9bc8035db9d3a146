"""The embedded default under concurrent use: two gunicorn workers and a Celery worker share
one SQLite file (WAL, busy timeout); parallel submits and polls never surface a 5xx or a
"database is locked" error."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.data import iris_job

from .stack import Stack

pytestmark = pytest.mark.e2e


def test_parallel_submits_and_polls_on_sqlite(tmp_path):
    stack = Stack(tmp_path, {"BACKPROP_WEB_WORKERS": "2", "BACKPROP_WORKER_CONCURRENCY": "2"}).up()
    try:
        body = iris_job(epochs=30)

        def client(i: int) -> list[tuple[int, str]]:
            seen = []
            status, job = stack.request("POST", "/v1/jobs", body)
            seen.append((status, str(job)[:200]))
            for _ in range(15):
                status, got = stack.request("GET", f"/v1/jobs/{job['id']}")
                seen.append((status, str(got)[:200]))
                status, got = stack.request("GET", "/v1/jobs?limit=5")
                seen.append((status, str(got)[:200]))
            return seen

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = [r for rs in pool.map(client, range(16)) for r in rs]
        bad = [r for r in results if r[0] >= 500 or "locked" in r[1]]
        assert not bad, (bad[:5], stack.logs())
        assert sum(1 for status, _ in results if status == 202) == 16
        _, page = stack.request("GET", "/v1/jobs?limit=50")
        for job in page["jobs"]:
            assert stack.wait_for_job(job["id"], timeout=120)["status"] == "succeeded"
    finally:
        stack.down()
