"""The API with its database or broker down, or worse, up and silent (a server that accepts a
connection and never answers): answers come within seconds, as 503s where the database is
needed, and an accepted job is kept for the reconciler."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time

import pytest
from sqlalchemy import select

from app import create_app
from core.db import Job
from tests.data import iris_job


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never sends a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held, stop = [], threading.Event()

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def timed(call, limit: float = 60):
    """(the answer, seconds it took); fails instead of hanging the suite when none comes."""
    out, started = [], time.monotonic()
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)
    thread.start()
    thread.join(limit)
    assert out, f"no answer in {limit} s"
    return out[0], time.monotonic() - started


def test_a_silent_redis_gives_a_503_readiness_and_the_submit_is_kept(migrated, silent_server):
    """It hung /readyz for good, and a submit (the rate limiter and the enqueue both wait on
    Redis): each probe held a web thread until /livez itself stopped answering."""
    app = create_app(dataclasses.replace(migrated, auth="off", broker_url=f"redis://127.0.0.1:{silent_server}/0"))
    client = app.test_client()
    resp, took = timed(lambda: client.get("/readyz"))
    assert resp.status_code == 503 and resp.get_json()["checks"]["broker"].startswith("error"), resp.get_json()
    assert took < 30, took
    resp, took = timed(lambda: client.post("/v1/jobs", json=iris_job(epochs=1)))
    assert resp.status_code == 202 and took < 60, (resp.status_code, took)
    with app.extensions["backprop"]["sessions"]() as s:  # kept, for the reconciler to send
        assert s.scalar(select(Job.enqueued_at).where(Job.id == resp.get_json()["id"])) is None
    app.extensions["backprop"]["engine"].dispose()


def test_a_redis_that_stops_answering_on_a_warm_connection_holds_a_submit_seconds_not_twenty(migrated, tmp_path):
    """A Redis process stopped (SIGSTOP: paused, its socket open) after the API had used its
    connection: a submit took 21.7 s (a 5 s socket timeout, two publish retries and a
    reconnect), holding a web thread all along. Now 2 s timeouts and one retry: about 7 s with the
    rate limiter's second."""
    import signal

    from tests.e2e.test_chaos import PrivateRedis

    redis = PrivateRedis(tmp_path).start()
    app = create_app(dataclasses.replace(migrated, auth="off", broker_url=redis.url))
    client = app.test_client()
    try:
        assert client.post("/v1/jobs", json=iris_job(epochs=1)).status_code == 202  # the connection, warm
        redis.proc.send_signal(signal.SIGSTOP)
        resp, took = timed(lambda: client.post("/v1/jobs", json=iris_job(epochs=1)))
        assert resp.status_code == 202 and took < 12, (resp.status_code, took)
        with app.extensions["backprop"]["sessions"]() as s:  # kept, for the reconciler to send
            assert s.scalar(select(Job.enqueued_at).where(Job.id == resp.get_json()["id"])) is None
    finally:
        redis.proc.send_signal(signal.SIGCONT)
        redis.kill()
        app.extensions["backprop"]["engine"].dispose()


def test_a_silent_rate_limiter_redis_delays_a_request_by_a_second_not_five(migrated, silent_server):
    """The limiter asks Redis on every /v1 request: with the broker's 5 s timeout each request
    took 5 s longer while Redis hung. It gives up after 1 s and lets the request through."""
    app = create_app(dataclasses.replace(migrated, auth="off", broker_url=f"redis://127.0.0.1:{silent_server}/0"))
    resp, took = timed(lambda: app.test_client().get("/v1/jobs"))
    assert resp.status_code == 200 and took < 4, took
    app.extensions["backprop"]["engine"].dispose()


@pytest.mark.parametrize("server", ["down", "silent"])
def test_a_database_that_does_not_answer_is_a_503_and_metrics_still_scrape(migrated, silent_server, server):
    """PostgreSQL down gave 500 internal_error with a traceback on every route, and /metrics
    failed whole; a silent one hung them."""
    port = silent_server if server == "silent" else 1  # nothing listens on port 1
    app = create_app(dataclasses.replace(migrated, auth="off", database_url=f"postgresql+psycopg://u@127.0.0.1:{port}/x"))
    client = app.test_client()
    for call in (lambda: client.get("/v1/jobs"), lambda: client.post("/v1/jobs", json=iris_job(epochs=1))):
        resp, took = timed(call)
        assert resp.status_code == 503 and resp.get_json()["code"] == "database_unavailable", resp.get_json()
        assert resp.headers["Retry-After"] == "5" and took < 30, took
    resp, _ = timed(lambda: client.get("/metrics"))
    assert resp.status_code == 200 and b"backprop_jobs_scrape_error 1.0" in resp.data
    assert b"backprop_http_requests_total" in resp.data
    assert timed(lambda: client.get("/readyz"))[0].status_code == 503 and client.get("/livez").status_code == 200
    app.extensions["backprop"]["engine"].dispose()
