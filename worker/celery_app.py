"""The worker's Celery app: `celery -A worker.celery_app worker`. Each pool process gets its own
database connections and BACKPROP_BLAS_THREADS BLAS threads (the defaults, one pool process per
core with one thread each, keep pool size x BLAS threads <= cores; nothing enforces it)."""

from __future__ import annotations

import logging
import multiprocessing

from celery.signals import (
    celeryd_init,
    setup_logging,
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from core.config import host_port, load_settings
from core.db import make_engine, make_sessionmaker
from core.logs import configure_logging, say
from core.queue import QUEUE, make_celery

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


@celeryd_init.connect
def _early_logging(**_kwargs):
    # the first thing a worker does, before Celery's own first words (its privilege warning) and
    # before worker_init, which may have to explain why the worker cannot start
    configure_logging(settings.log_level, settings.log_format)
    if settings.log_format == "json":
        # the notices Celery prints from its signal handlers ("worker: Warm shutdown
        # (MainProcess)") as JSON lines too
        import celery.apps.worker

        celery.apps.worker.safe_say = say


@setup_logging.connect
def _logging(**_kwargs):
    configure_logging(settings.log_level, settings.log_format)  # JSON lines with the job id, not Celery's format


_metrics_server = None


@worker_init.connect
def _bind_metrics_port(**_kwargs):
    """The metrics port is taken before the worker starts consuming: a port another process holds
    (a second worker on the host with the same BACKPROP_WORKER_METRICS_PORT) stops this worker
    with one line naming the variable and exit code 2, instead of a worker that runs on with no
    metrics and a logged OSError. A SystemExit here passes through Celery's signal dispatch
    (which catches only Exception) and ends `celery worker` before any pool process starts."""
    global _metrics_server
    if not settings.worker_metrics_port:
        return
    try:
        _metrics_server = bind_metrics_server(settings.worker_metrics_port, settings.host)
    except OSError as exc:
        log.critical("BACKPROP_WORKER_METRICS_PORT=%d cannot be used: %s cannot be bound (%s); another worker "
                     "on this host may hold it: give each worker its own port, or 0 for none",
                     settings.worker_metrics_port, host_port(settings.host, settings.worker_metrics_port),
                     exc.strerror or exc)
        raise SystemExit(2) from None


@worker_process_init.connect
def _after_fork(**_kwargs):
    # connections inherited from the parent must not be shared across processes
    engine.dispose(close=False)
    limit_blas_threads(settings.blas_threads)
    if _metrics_server is not None:
        # the main process serves the port: a pool process outliving it must not keep it taken
        _metrics_server.socket.close()


_reconciler = None


@worker_ready.connect
def _start_reconciler(sender=None, **_kwargs):
    global _reconciler
    from .reconciler import ReconcilerThread

    if settings.log_format == "json":  # what Celery's banner (left out: --quiet) said, as one line
        log.info("worker %s: %d training process(es), queue %s, broker %s",
                 getattr(sender, "hostname", "?"), settings.worker_concurrency, QUEUE,
                 settings.public()["broker_url"])
    _reconciler = ReconcilerThread(sessions, celery, settings)
    _reconciler.start()
    if _metrics_server is not None:
        serve_metrics(_metrics_server, settings.host)


def bind_metrics_server(port: int, host: str = "127.0.0.1"):
    """A server for this worker's metrics (all its pool processes together) on its own port, on
    the address the API listens on (BACKPROP_HOST): loopback unless the deployment opens it.
    Bound (OSError when the port is taken) but not yet serving: see serve_metrics."""
    import os
    import socket
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client import REGISTRY, CollectorRegistry, multiprocess
    from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

    class Server(ThreadingWSGIServer):
        address_family = family  # an IPv6 BACKPROP_HOST (::1) too

    class Quiet(WSGIRequestHandler):
        def log_message(self, *_args):  # a line per scrape would drown the worker's log
            pass

    return make_server(host, port, make_wsgi_app(registry), Server, handler_class=Quiet)


def serve_metrics(server, host: str = "127.0.0.1") -> None:
    import threading

    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("worker metrics on %s/metrics", host_port(host, server.server_address[1]))


@worker_shutting_down.connect
def _hand_jobs_back(**_kwargs):
    _shutting_down.value = 1


@worker_shutdown.connect
def _stop_reconciler(**_kwargs):
    if _reconciler is not None:
        _reconciler.stopping.set()


from . import tasks  # noqa: E402,F401  (registers the tasks on `celery`)
