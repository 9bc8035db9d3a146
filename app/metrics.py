"""GET /metrics in Prometheus format: HTTP requests by route and status, latencies, and - read
from the database at scrape time, so every API process agrees - jobs by status and queue depth."""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from core.db import Job, JobStatus
from core.metrics import HTTP_LATENCY, HTTP_REQUESTS, PREDICT_LATENCY, render

from .openapi import doc

bp = Blueprint("metrics", __name__)
log = logging.getLogger(__name__)


def scrape_error(value: int) -> GaugeMetricFamily:
    return GaugeMetricFamily("backprop_jobs_scrape_error", "1 when the jobs could not be read", value=value)


class JobsCollector:
    """Jobs by status (all tenants) and the number waiting for a worker."""

    def __init__(self, sessions):
        self.sessions = sessions

    def collect(self):
        jobs = GaugeMetricFamily("backprop_jobs", "Jobs by status", labels=["status"])
        try:
            with self.sessions() as session:
                counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        except SQLAlchemyError:  # the HTTP metrics are still worth a scrape; this says why jobs are missing
            log.warning("metrics: the database does not answer", exc_info=True)
            yield scrape_error(1)
            return
        for status in JobStatus.ALL:
            jobs.add_metric([status], counts.get(status, 0))
        yield jobs
        yield scrape_error(0)  # always there, so that an alert on it need not test that it exists
        yield GaugeMetricFamily("backprop_queue_depth", "Jobs queued and not yet picked up by a worker",
                                value=counts.get(JobStatus.QUEUED, 0))


@bp.get("/metrics")
@doc("Prometheus metrics", tag="health", raw_response={"text/plain": {"schema": {"type": "string"}}})
def metrics():
    collector = JobsCollector(current_app.extensions["backprop"]["sessions"])
    return Response(render([collector]), content_type=CONTENT_TYPE_LATEST)  # as is: it has its charset


# A client chooses the method: as a label it must come from a fixed set, or every made-up method
# ("XKQZ /livez", no key needed) would add a series to every scrape, without bound.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def init_http_metrics(app: Flask) -> None:
    @app.before_request
    def _start_timer():
        g.started = time.perf_counter()

    @app.after_request
    def _count(resp):
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        method = request.method if request.method in HTTP_METHODS else "other"
        HTTP_REQUESTS.labels(route, method, str(resp.status_code)).inc()
        HTTP_LATENCY.labels(route).observe(elapsed)
        if request.endpoint and "predict" in request.endpoint and resp.status_code == 200:
            PREDICT_LATENCY.observe(elapsed)
        return resp
