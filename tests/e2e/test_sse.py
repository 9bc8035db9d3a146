"""GET /v1/jobs/{id}/events end to end: real gunicorn and Celery processes (embedded: SQLite and
the filesystem broker), a real job, and the stream read line by line as it is written."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from tests.data import iris_job

from .stack import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    try:
        yield s.up()
    finally:
        s.down()


def read_events(stack: Stack, job_id: str, headers: dict[str, str] | None = None, timeout: float = 120):
    """Every event of the stream, parsed as an EventSource would, with the time each arrived;
    returns when the server ends the stream."""
    req = urllib.request.Request(f"{stack.url}/v1/jobs/{job_id}/events",
                                 headers={"Accept": "text/event-stream", **(headers or {}),
                                          **({"Authorization": f"Bearer {stack.api_key}"} if stack.api_key else {})})
    events, fields, data = [], {}, []
    deadline = time.monotonic() + timeout
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["Cache-Control"] == "no-cache"
        for raw in resp:  # one line at a time, as the server flushes them
            assert time.monotonic() < deadline, "the stream did not end"
            line = raw.decode().rstrip("\r\n")
            if line == "":
                if data:
                    events.append({**fields, "data": json.loads("\n".join(data)), "at": time.monotonic()})
                fields, data = {}, []
            elif line.startswith(":"):
                continue  # keep-alive comment
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    data.append(value)
                else:
                    fields[name] = value
    return events


def test_events_follow_a_job_to_its_end(stack):
    epochs = 40
    status, job = stack.request("POST", "/v1/jobs", iris_job(epochs=epochs))
    assert status == 202, job
    opened = time.monotonic()
    events = read_events(stack, job["id"])

    kinds = [e["event"] for e in events]
    assert set(kinds) == {"epoch", "status"}
    numbered = [e for e in events if e["event"] == "epoch"]
    assert [e["data"]["epoch"] for e in numbered] == list(range(1, epochs + 1))  # each once, in order
    assert [e["id"] for e in numbered] == [str(n) for n in range(1, epochs + 1)]
    assert all(set(e["data"]) >= {"loss", "accuracy", "duration", "grad_norms", "weight_norms"} for e in numbered)

    statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
    assert statuses[-1] == "succeeded" and events[-1]["event"] == "status"  # it ends with the terminal status
    assert len(statuses) == len(set(statuses))  # a status is sent when it changes
    assert set(statuses) <= {"queued", "running", "succeeded"}
    final = events[-1]["data"]
    assert final["id"] == job["id"] and final["progress"] == {"epoch": epochs, "total_epochs": epochs}
    assert final["metrics"]["accuracy"] > 0.8

    # the stream carried the history live, not only at the end
    assert numbered[0]["at"] < events[-1]["at"] and numbered[0]["at"] - opened < 60
    _, polled = stack.request("GET", f"/v1/jobs/{job['id']}/epochs")
    assert [e["data"] for e in numbered] == polled["epochs"]


def test_a_reconnecting_client_gets_only_what_it_missed(stack):
    status, job = stack.request("POST", "/v1/jobs", iris_job(epochs=12))
    assert status == 202, job
    stack.wait_for_job(job["id"])
    resumed = read_events(stack, job["id"], headers={"Last-Event-ID": "9"})
    assert [e["data"]["epoch"] for e in resumed if e["event"] == "epoch"] == [10, 11, 12]
    assert [e["event"] for e in resumed][-1] == "status" and resumed[-1]["data"]["status"] == "succeeded"
    by_query = urllib.request.Request(f"{stack.url}/v1/jobs/{job['id']}/events?after=12",
                                      headers={"Authorization": f"Bearer {stack.api_key}"})
    with urllib.request.urlopen(by_query, timeout=30) as resp:
        text = resp.read().decode()
    assert "event: epoch" not in text and '"status":"succeeded"' in text


def test_events_of_an_unknown_job_are_a_404_problem(stack):
    status, body = stack.request("GET", "/v1/jobs/doesnotexist/events")
    assert status == 404 and body["code"] == "job_not_found"
