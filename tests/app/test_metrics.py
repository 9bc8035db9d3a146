"""GET /metrics: HTTP requests by route and status, jobs by status, queue depth, predict latency."""

from __future__ import annotations

import json
import logging

from prometheus_client.parser import text_string_to_metric_families

from core.logs import JsonFormatter, job_id_var, request_id_var
from tests.data import iris_job
from worker.training import run_job


def samples(client) -> dict[tuple[str, tuple], float]:
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    out = {}
    for family in text_string_to_metric_families(resp.get_data(as_text=True)):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_requests_jobs_and_predictions(client, sessions):
    queued = client.post("/v1/jobs", json=iris_job(epochs=2)).get_json()["id"]
    done = client.post("/v1/jobs", json=iris_job(epochs=2)).get_json()["id"]
    run_job(sessions, done)
    client.get("/v1/jobs/nope")
    assert client.post(f"/v1/jobs/{done}/predict", json={"inputs": [[0, 0, 0, 0]]}).status_code == 200
    m = samples(client)
    assert m[("backprop_jobs", (("status", "queued"),))] == 1
    assert m[("backprop_jobs", (("status", "succeeded"),))] == 1
    assert m[("backprop_jobs_scrape_error", ())] == 0  # present when all is well, for alerts on it
    assert m[("backprop_queue_depth", ())] == 1
    posted = ("backprop_http_requests_total", (("method", "POST"), ("route", "/v1/jobs"), ("status", "202")))
    assert m[posted] >= 2
    missing = ("backprop_http_requests_total", (("method", "GET"), ("route", "/v1/jobs/<job_id>"), ("status", "404")))
    assert m[missing] >= 1
    assert m[("backprop_predict_latency_seconds_count", ())] >= 1
    assert queued


def test_made_up_methods_share_one_label(client):
    """The method label comes from a fixed set: each made-up method added a series (2,000
    requests with random methods made 2,000, and /livez needs no key)."""
    for method in ("XKQZ", "QWERTY"):
        assert client.open("/livez", method=method).status_code == 405
    m = samples(client)
    methods = {dict(labels)["method"] for name, labels in m if name == "backprop_http_requests_total"}
    assert "other" in methods and not methods & {"XKQZ", "QWERTY"}


def test_log_lines_are_json_with_request_and_job_ids():
    record = logging.LogRecord("backprop.worker", logging.INFO, __file__, 1, "epoch %d done", (3,), None)
    r_token, j_token = request_id_var.set("req-1"), job_id_var.set("job-1")
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(r_token)
        job_id_var.reset(j_token)
    assert line["message"] == "epoch 3 done" and line["level"] == "INFO"
    assert line["request_id"] == "req-1" and line["job_id"] == "job-1"


def test_metrics_content_type_is_prometheus_own(client):
    """Flask added a second charset to it ("...; charset=utf-8; charset=utf-8")."""
    from prometheus_client import CONTENT_TYPE_LATEST

    assert client.get("/metrics").headers["Content-Type"] == CONTENT_TYPE_LATEST

