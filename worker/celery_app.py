"""The worker's Celery app: `celery -A worker.celery_app worker`. Each pool process gets its own
database connections and BACKPROP_BLAS_THREADS BLAS threads (the defaults, one pool process per
core with one thread each, keep pool size x BLAS threads <= cores; nothing enforces it)."""

from __future__ import annotations

import logging
import multiprocessing

from celery.signals import (
    setup_logging,
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from core.config import load_settings
from core.db import make_engine, make_sessionmaker
from core.logs import configure_logging
from core.queue import make_celery

settings = load_settings()
celery = make_celery(settings)
engine = make_engine(settings.database_url)
sessions = make_sessionmaker(engine)
log = logging.getLogger("backprop.worker")

# Set in the main process when the worker starts shutting down. The pool processes are forked
# after this module is imported, so they share it: a running job sees it at its next batch and
# hands itself back to the queue (worker/training.py) instead of keeping the warm shutdown
# waiting, or being killed and waiting for its heartbeat to go stale. A byte of shared memory
# with no lock: it is set from a signal handler, and a pool process killed while reading it
# must not leave anything locked.
_shutting_down = multiprocessing.RawValue("b", 0)


def shutting_down() -> bool:
    return bool(_shutting_down.value)


def limit_blas_threads(n: int) -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n)


@setup_logging.connect
def _logging(**_kwargs):
    configure_logging(settings.log_level, settings.log_format)  # JSON lines with the job id, not Celery's format


@worker_process_init.connect
def _after_fork(**_kwargs):
    # connections inherited from the parent must not be shared across processes
    engine.dispose(close=False)
    limit_blas_threads(settings.blas_threads)


_reconciler = None


@worker_ready.connect
def _start_reconciler(**_kwargs):
    global _reconciler
    from .reconciler import ReconcilerThread

    _reconciler = ReconcilerThread(sessions, celery, settings)
    _reconciler.start()
    if settings.worker_metrics_port:
        start_metrics_server(settings.worker_metrics_port, settings.host)


def start_metrics_server(port: int, host: str = "127.0.0.1") -> None:
    """Serve this worker's metrics (all its pool processes together) on its own port, on the
    address the API listens on (BACKPROP_HOST): loopback unless the deployment opens it."""
    import os

    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = None
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    start_http_server(port, addr=host, **({"registry": registry} if registry else {}))
    log.info("worker metrics on %s:%d/metrics", host, port)


@worker_shutting_down.connect
def _hand_jobs_back(**_kwargs):
    _shutting_down.value = 1


@worker_shutdown.connect
def _stop_reconciler(**_kwargs):
    if _reconciler is not None:
        _reconciler.stopping.set()


from . import tasks  # noqa: E402,F401  (registers the tasks on `celery`)
