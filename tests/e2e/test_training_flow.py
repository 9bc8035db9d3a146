"""The whole flow with real processes: POST iris -> a Celery worker trains it -> poll ->
epochs -> weights -> predict. Once on Redis + PostgreSQL, once embedded with no server."""

from __future__ import annotations

import numpy as np
import pytest

from tests.data import iris, iris_job

from .stack import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture
def embedded_stack(tmp_path):
    stack = Stack(tmp_path)
    try:
        yield stack.up()
    finally:
        stack.down()


@pytest.fixture
def server_stack(tmp_path, postgres_url, redis_url):
    stack = Stack(tmp_path, {"BACKPROP_DATABASE_URL": postgres_url, "BACKPROP_BROKER_URL": redis_url})
    try:
        yield stack.up()
    finally:
        stack.down()


def iris_flow(stack: Stack) -> None:
    status, job = stack.request("POST", "/v1/jobs", iris_job(epochs=80))
    assert status == 202, job
    job = stack.wait_for_job(job["id"])
    assert job["status"] == "succeeded", (job, stack.logs())
    assert job["worker"] and job["attempts"] == 1

    _, epochs = stack.request("GET", f"/v1/jobs/{job['id']}/epochs")
    losses = [e["loss"] for e in epochs["epochs"]]
    assert len(losses) == 80
    assert losses[-1] < 0.5 * losses[0]

    status, weights = stack.request("GET", f"/v1/jobs/{job['id']}/weights")
    assert status == 200 and {w["name"] for w in weights["weights"]} == {
        "dense_0/kernel", "dense_0/bias", "dense_1/kernel", "dense_1/bias"}

    x, y = iris()
    status, pred = stack.request("POST", f"/v1/jobs/{job['id']}/predict", {"inputs": x.tolist()})
    assert status == 200
    accuracy = float(np.mean(np.array(pred["predictions"]) == y))
    assert accuracy >= 0.9, accuracy


def test_iris_on_redis_and_postgres(server_stack):
    iris_flow(server_stack)


def test_iris_embedded_no_servers(embedded_stack):
    iris_flow(embedded_stack)


def test_bad_job_is_refused_before_queueing(embedded_stack):
    body = iris_job()
    body["model"]["layers"][0]["units"] = 0
    status, problem = embedded_stack.request("POST", "/v1/jobs", body)
    assert status == 422 and problem["errors"][0]["path"] == "model.layers[0].units"
