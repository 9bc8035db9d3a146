"""Prometheus metrics shared by the API and the workers. Both run several processes (gunicorn
workers, Celery pool processes), so when PROMETHEUS_MULTIPROC_DIR is set - `backprop serve`
and `backprop worker` set it - values are aggregated across processes at scrape time."""

from __future__ import annotations

import os
import re
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


# the folders `backprop serve|worker|run` make (core/cli.py process_env): KIND-PID
SERVER_DIR = re.compile(r"(api|worker)-([0-9]+)")


def prepare_multiprocess_dir(path: Path) -> str:
    """An empty directory for one server's processes (stale files from a previous run removed),
    and the folders of servers that no longer run removed beside it: each start made a new
    api-PID or worker-PID folder, and nothing removed those of processes that had ended."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    remove_dead_server_dirs(path.parent, keep=path)
    return str(path)


def remove_dead_server_dirs(parent: Path, keep: Path | None = None) -> list[Path]:
    """Remove parent/api-PID and parent/worker-PID for every PID that no process has (only our
    own pattern, only directories, never `keep`); the removed folders."""
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = SERVER_DIR.fullmatch(entry.name)
        if not m or entry == keep or entry.is_symlink() or not entry.is_dir() or _pid_alive(int(m.group(2))):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a process of ours to judge: keep it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # another user's process (or a pid we cannot ask about): keep its folder
    return True


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
