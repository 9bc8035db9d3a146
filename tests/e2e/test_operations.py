"""Operations with real processes: JSON logs carry request and job ids, and the workers
export their own metrics."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest

from tests.data import iris_job

from .stack import Stack, free_port

pytestmark = pytest.mark.e2e


def test_json_logs_and_worker_metrics(tmp_path):
    port = free_port()
    stack = Stack(tmp_path, {"BACKPROP_WORKER_METRICS_PORT": str(port)}).up()
    try:
        status, job = stack.request("POST", "/v1/jobs", iris_job(epochs=20))
        assert status == 202
        assert stack.wait_for_job(job["id"])["status"] == "succeeded"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        epochs = [line for line in text.splitlines() if line.startswith("backprop_epochs_total ")]
        assert epochs and float(epochs[0].split()[1]) == 20
        assert 'backprop_jobs_finished_total{status="succeeded"} 1.0' in text
        with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as raw:  # a backslash in the URL
            raw.sendall(b"GET /livez?y=a\\ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert raw.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        stack.down()
    worker_lines = [json.loads(line) for line in (tmp_path / "worker0.log").read_text().splitlines()
                    if line.startswith("{")]
    assert any(entry["job_id"] == job["id"] for entry in worker_lines), worker_lines[-5:]
    # on BACKPROP_HOST (loopback here), not on every interface whatever the API listens on
    assert any(e["message"] == f"worker metrics on 127.0.0.1:{port}/metrics" for e in worker_lines)
    api_lines = [json.loads(line) for line in (tmp_path / "api.log").read_text().splitlines()
                 if line.startswith("{")]  # every line JSON: a backslash in a URL broke access lines
    access = [e for e in api_lines if e["logger"] == "gunicorn.access" and job["id"] in e["message"]]
    assert access and all(len(e["request_id"]) == 32 for e in access)
    assert all(e["job_id"] == job["id"] for e in access) and access[0]["ts"].endswith("+00:00")
    assert any(e["message"] == "GET /livez?y=a\\ HTTP/1.1" for e in api_lines)
    app_lines = [e for e in api_lines if e["logger"].startswith("app") and e.get("job_id") == job["id"]]
    assert app_lines, "the API's own log lines name the job"
