"""Prometheus metrics shared by the API and the workers. Both run several processes (gunicorn
workers, Celery pool processes), so when PROMETHEUS_MULTIPROC_DIR is set - `backprop serve`
and `backprop worker` set it - values are aggregated across processes at scrape time."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

HTTP_REQUESTS = Counter("backprop_http_requests_total", "HTTP requests by route, method and status",
                        ["route", "method", "status"])
HTTP_LATENCY = Histogram("backprop_http_request_duration_seconds", "HTTP request latency", ["route"])
PREDICT_LATENCY = Histogram("backprop_predict_latency_seconds", "Latency of predictions, model load included",
                            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
EPOCH_DURATION = Histogram("backprop_epoch_duration_seconds", "Duration of one training epoch",
                           buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300))
EPOCHS = Counter("backprop_epochs_total", "Training epochs finished")
JOBS_FINISHED = Counter("backprop_jobs_finished_total", "Jobs a worker ended, by final status", ["status"])


def prepare_multiprocess_dir(path: Path) -> str:
    """An empty directory for one server's processes (stale files from a previous run removed)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def render(extra_collectors=()) -> bytes:
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    for collector in extra_collectors:
        registry.register(collector)
    try:
        return generate_latest(registry)
    finally:
        for collector in extra_collectors:
            registry.unregister(collector)
