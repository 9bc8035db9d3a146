"""API keys, tenant isolation, limits on every input, and hostile requests: all 4xx, never 500."""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import random
import threading
import time

import numpy as np
import pytest
from sqlalchemy import delete, select, update
from werkzeug.serving import make_server

from app import create_app
from core.config import Settings
from core.db import ApiKey, Dataset, EpochRecord, Job, WeightArray
from core.keys import create_key
from tests.data import iris, iris_job
from worker.training import run_job


@pytest.fixture
def secured(migrated):
    app = create_app(dataclasses.replace(migrated, auth="on"))
    yield app
    app.extensions["backprop"]["engine"].dispose()


def key_for(app, tenant: str) -> dict[str, str]:
    with app.extensions["backprop"]["sessions"].begin() as s:
        return {"Authorization": f"Bearer {create_key(s, tenant)}"}


def test_requests_without_a_valid_key_get_401(secured):
    c = secured.test_client()
    for headers in ({}, {"Authorization": "Bearer bp_nope_nope"}, {"Authorization": "Basic abc"}):
        resp = c.get("/v1/jobs", headers=headers)
        assert resp.status_code == 401 and resp.mimetype == "application/problem+json"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert c.get("/livez").status_code == 200  # probes stay open
    assert c.get("/v1/jobs", headers=key_for(secured, "acme")).status_code == 200


def test_keys_are_compared_in_constant_time_whether_or_not_the_prefix_exists(secured, monkeypatch):
    """A timing difference must not tell a caller how much of a key is right, nor whether its
    prefix exists: the hashes are compared with hmac.compare_digest, and a key whose prefix is
    unknown is compared too (against a stand-in hash)."""
    import hmac

    compared, real = [], hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    headers = key_for(secured, "acme")
    c = secured.test_client()
    assert c.get("/v1/jobs", headers=headers).status_code == 200
    assert c.get("/v1/jobs", headers={"Authorization": headers["Authorization"] + "x"}).status_code == 401
    assert c.get("/v1/jobs", headers={"Authorization": "Bearer bp_nosuchprefix_secret"}).status_code == 401
    assert len(compared) == 3 and all(len(a) == len(b) == 64 for a, b in compared)


def test_the_database_keeps_only_a_hash_and_revoked_keys_stop_working(secured):
    headers = key_for(secured, "acme")
    key = headers["Authorization"].split()[1]
    with secured.extensions["backprop"]["sessions"].begin() as s:
        row = s.scalar(select(ApiKey))
        assert key not in (row.key_hash, row.prefix) and len(row.key_hash) == 64
        assert key.startswith(f"bp_{row.prefix}_")
        row.revoked_at = row.created_at
    assert secured.test_client().get("/v1/jobs", headers=headers).status_code == 401


def test_an_open_event_stream_ends_when_its_key_is_revoked(secured, monkeypatch):
    import app.jobs as jobs_module

    monkeypatch.setattr(jobs_module, "SSE_POLL_SECONDS", 0.02)
    c = secured.test_client()
    headers = key_for(secured, "acme")
    job_id = c.post("/v1/jobs", json=iris_job(epochs=3), headers=headers).get_json()["id"]
    resp = c.get(f"/v1/jobs/{job_id}/events", headers=headers, buffered=False)
    chunks = iter(resp.response)
    assert b"retry" in next(chunks)
    with secured.extensions["backprop"]["sessions"].begin() as s:
        s.execute(update(ApiKey).values(revoked_at=ApiKey.created_at))
    run_job(secured.extensions["backprop"]["sessions"], job_id)
    rest = b"".join(chunks)  # ends at the next poll, without the epochs trained since
    assert b"event: epoch" not in rest and b'"succeeded"' not in rest, rest
    resp.close()
    assert c.get(f"/v1/jobs/{job_id}/events", headers=headers).status_code == 401


def test_another_tenants_ids_answer_404_everywhere(secured):
    c = secured.test_client()
    alice, bob = key_for(secured, "alice"), key_for(secured, "bob")
    job_id = c.post("/v1/jobs", json=iris_job(epochs=2), headers=alice).get_json()["id"]
    run_job(secured.extensions["backprop"]["sessions"], job_id)
    assert c.get(f"/v1/jobs/{job_id}", headers=alice).status_code == 200
    for method, path, body in [
        ("get", f"/v1/jobs/{job_id}", None), ("get", f"/v1/jobs/{job_id}/epochs", None),
        ("get", f"/v1/jobs/{job_id}/weights", None), ("get", f"/v1/jobs/{job_id}/diagnostics", None),
        ("get", f"/v1/jobs/{job_id}/events", None),
        ("post", f"/v1/jobs/{job_id}/predict", {"inputs": [[0, 0, 0, 0]]}),
        ("post", f"/v1/jobs/{job_id}/cancel", None), ("post", f"/v1/jobs/{job_id}/retry", None),
        ("delete", f"/v1/jobs/{job_id}", None),
        ("post", "/v1/jobs", {**iris_job(epochs=2), "init_from": job_id}),
    ]:
        resp = getattr(c, method)(path, json=body, headers=bob)
        assert resp.status_code == 404, (method, path, resp.get_json())
    assert c.get("/v1/jobs", headers=bob).get_json()["jobs"] == []
    assert [j["id"] for j in c.get("/v1/jobs", headers=alice).get_json()["jobs"]] == [job_id]


def test_auth_may_be_off_only_on_loopback():
    assert Settings(host="127.0.0.1", auth="auto").auth_enabled is False  # the embedded default
    assert Settings(host="0.0.0.0", auth="auto").auth_enabled is True
    with pytest.raises(ValueError, match="only allowed"):
        Settings(host="0.0.0.0", auth="off").auth_enabled  # noqa: B018
    assert Settings(host="127.0.0.1", database_url="postgresql+psycopg://x/y").auth_enabled is True


def _limited(migrated, **limits):
    return create_app(dataclasses.replace(migrated, **limits))


@pytest.mark.parametrize("limit, change, path, words", [
    ({"max_units": 8}, lambda b: b["model"]["layers"][0].update(units=9), "model.layers[0].units", "<= 8"),
    ({"max_layers": 1}, lambda b: None, "model.layers", "limit is 1"),
    ({"max_epochs": 10}, lambda b: b["training"].update(epochs=11), "training.epochs", "<= 10"),
    ({"max_rows": 100}, lambda b: None, "dataset.features", "limit is 100"),
    ({"max_sample_values": 3}, lambda b: None, "model.input_shape", "at most 3"),
    # NumPy holds at most 64 axes; no layer but dense takes more than 3
    ({}, lambda b: b["model"].update(input_shape=[1] * 9), "model.input_shape", "at most 8 axes, not 9"),
    # a name keys every epoch's norms and the weights (a 70,000-letter one broke the .npz download)
    ({}, lambda b: b["model"]["layers"][0].update(name="n" * 129), "model.layers[0].name",
     "at most 128 characters, not 129"),
])
def test_size_limits_are_422_before_anything_is_stored(migrated, limit, change, path, words):
    app = _limited(migrated, **limit)
    body = iris_job(epochs=5)
    change(body)
    resp = app.test_client().post("/v1/jobs", json=body)
    assert resp.status_code == 422, resp.get_json()
    assert any(e["path"] == path and words in e["message"] for e in resp.get_json()["errors"]), resp.get_json()
    with app.extensions["backprop"]["sessions"]() as s:
        assert s.scalar(select(Job)) is None
    app.extensions["backprop"]["engine"].dispose()


@pytest.mark.parametrize("limit, change, path", [
    ({"max_units": 20}, lambda b: b["model"]["layers"][0].update(units=21.0), "model.layers[0].units"),
    ({"max_epochs": 10}, lambda b: b["training"].update(epochs=11.0), "training.epochs"),
])
def test_limits_see_integral_floats(migrated, limit, change, path):
    app = _limited(migrated, **limit)
    body = iris_job(epochs=5)
    change(body)
    resp = app.test_client().post("/v1/jobs", json=body)
    assert resp.status_code == 422 and resp.get_json()["errors"][0]["path"] == path
    app.extensions["backprop"]["engine"].dispose()


def test_a_network_too_large_is_refused_before_it_is_built(migrated, monkeypatch):
    import core.nn.network as network

    app = _limited(migrated, max_parameters=1_000_000)
    built = []
    monkeypatch.setattr(network.Network, "_pack", lambda self: built.append(self))  # a real build packs
    body = iris_job(epochs=1)
    body["model"]["layers"] = [{"type": "dense", "units": 8000, "activation": "relu"}] * 3 + [
        {"type": "dense", "units": 3, "activation": "softmax"}]
    resp = app.test_client().post("/v1/jobs", json=body)
    assert resp.status_code == 422 and resp.get_json()["code"] == "model_too_large"
    assert resp.get_json()["parameters"] == 4 * 8000 + 8000 + 2 * (8000 * 8000 + 8000) + 8000 * 3 + 3
    assert built == []
    app.extensions["backprop"]["engine"].dispose()


def _orthogonal_job(width: int, **data) -> dict:
    """The reviewer's body: float64, a width x width orthogonal kernel, then 768 units and 2 classes."""
    return {"model": {"input_shape": [width], "dtype": "float64", "loss": "categorical_crossentropy",
                      "layers": [{"type": "dense", "units": width, "kernel_initializer": "orthogonal"},
                                 {"type": "dense", "units": 768, "activation": "relu"},
                                 {"type": "dense", "units": 2, "activation": "softmax"}]},
            "training": {"epochs": 1}, **data}


def test_a_submit_is_checked_without_initialising_any_weight(client, sessions, monkeypatch):
    """A 285-byte body naming a 4096 x 4096 orthogonal kernel in float64 and a dataset_id that
    does not exist took 6.4 s and 800 MB of a web thread before its 422: the network was built,
    its weights initialised, before the dataset was looked at. Submissions check and cost the
    shapes alone; the worker initialises the weights."""
    import tracemalloc

    from core.nn.initializers import INITIALIZERS

    initialised = []
    for name, init in list(INITIALIZERS.items()):
        monkeypatch.setitem(INITIALIZERS, name, lambda *a, _init=init, _name=name: initialised.append(_name)
                            or _init(*a))
    x, y = iris()
    iris_id = client.post("/v1/datasets", json={"features": x.tolist(), "targets": y.tolist()}).get_json()["id"]
    width = 2048
    weight_bytes = 8 * (width * width + width + width * 768 + 768 + 768 * 2 + 2)
    client.post("/v1/jobs", json=_orthogonal_job(8, dataset_id="nope"))  # first-request imports and caches
    for dataset_id, message in [("nope", "no dataset with id 'nope'"),
                                (iris_id, f"samples have shape [4], model.input_shape is [{width}]")]:
        tracemalloc.start()
        try:
            resp = client.post("/v1/jobs", json=_orthogonal_job(width, dataset_id=dataset_id))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert resp.status_code == 422, resp.get_json()
        assert resp.get_json()["errors"] == [{"path": "dataset_id", "message": message}]
        assert peak < weight_bytes / 20, (peak, weight_bytes)  # not the weights, nor a part of them
    assert initialised == []
    # a job that is accepted is initialised by the worker, and trains
    body = {**iris_job(epochs=2), "dataset": None, "dataset_id": iris_id}
    body["model"]["layers"][0]["kernel_initializer"] = "orthogonal"
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 202 and initialised == [], resp.get_json()
    run_job(sessions, resp.get_json()["id"])
    assert client.get(f"/v1/jobs/{resp.get_json()['id']}").get_json()["status"] == "succeeded"
    assert "orthogonal" in initialised


def test_huge_windows_are_refused(client):
    body = iris_job(epochs=1)
    body["model"] = {"input_shape": [4, 4, 1], "loss": "categorical_crossentropy",
                     "layers": [{"type": "conv2d", "filters": 2, "kernel_size": 3000, "padding": "same"},
                                {"type": "flatten"}, {"type": "dense", "units": 3, "activation": "softmax"}]}
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 422 and resp.get_json()["errors"][0]["path"] == "model.layers[0].kernel_size"


def test_compute_budget_states_the_figure_and_the_limit(migrated):
    app = _limited(migrated, max_compute=1e6)
    resp = app.test_client().post("/v1/jobs", json=iris_job(epochs=100))
    body = resp.get_json()
    assert resp.status_code == 422 and body["code"] == "compute_budget_exceeded"
    # the forward pass's multiply-adds: 4*16 + 16*3 per sample
    assert body["compute"] == 112 * 150 * 100 and body["limit"] == 1e6
    assert "1.68e+06" in body["detail"] and "112 per sample" in body["detail"] and "1e+06" in body["detail"]
    app.extensions["backprop"]["engine"].dispose()


def _conv_job(image: int, filters: int, samples: int, batch_size: int) -> dict:
    return {"model": {"input_shape": [image, image, 1], "loss": "mse", "layers": [
                {"type": "conv2d", "filters": filters, "kernel_size": 3, "padding": "same"},
                {"type": "avg_pool2d", "pool_size": min(image, 256)}, {"type": "flatten"},
                {"type": "dense", "units": 1}]},
            "training": {"epochs": 1, "batch_size": batch_size},
            "dataset": {"features": np.zeros((samples, image, image, 1)).tolist(), "targets": [0.0] * samples}}


def test_a_batch_too_large_for_memory_is_refused_before_it_is_queued(migrated):
    """A 316x316 image through 8192 filters holds about 6.5 GB per sample in training (the
    im2col patches and the outputs, with their gradients); accepted, it took a worker to 23 GB
    until the kernel killed it, three times over. It is refused at submission now, naming the
    batch size and the memory it would take."""
    app = create_app(migrated)
    client = app.test_client()
    resp = client.post("/v1/jobs", json=_conv_job(316, 8192, 2, 2))
    body = resp.get_json()
    assert resp.status_code == 422 and body["code"] == "batch_too_large", body
    assert body["errors"][0]["path"] == "training.batch_size" and "BACKPROP_MAX_BATCH_MB" in body["detail"]
    assert 12_000 < body["memory_mb"] < 30_000 and body["limit_mb"] == 2048
    with app.extensions["backprop"]["sessions"]() as s:
        assert s.query(Job).count() == 0
    app.extensions["backprop"]["engine"].dispose()

    small = _limited(migrated, max_batch_mb=1)
    client = small.test_client()
    # 8x8 positions x (3*3 + 1 patch values + 64 outputs) x 2 ~ 9.5k values a sample: 32 of them ~ 1.2 MB
    resp = client.post("/v1/jobs", json=_conv_job(8, 64, 32, 32))
    assert resp.status_code == 422 and resp.get_json()["code"] == "batch_too_large"
    assert client.post("/v1/jobs", json=_conv_job(8, 64, 32, 16)).status_code == 202
    # a batch larger than the data is the data: 4 samples
    assert client.post("/v1/jobs", json=_conv_job(8, 64, 4, 100_000)).status_code == 202
    small.extensions["backprop"]["engine"].dispose()

    # a job accepted under a higher limit (that may then have run out of memory) is not retried past it
    roomy = create_app(migrated)
    job_id = roomy.test_client().post("/v1/jobs", json=_conv_job(8, 64, 32, 32)).get_json()["id"]
    roomy.extensions["backprop"]["engine"].dispose()
    with small.extensions["backprop"]["sessions"].begin() as s:
        s.get(Job, job_id).status = "failed"
    resp = small.test_client().post(f"/v1/jobs/{job_id}/retry")
    assert resp.status_code == 422 and resp.get_json()["code"] == "batch_too_large", resp.get_json()
    small.extensions["backprop"]["engine"].dispose()


def test_the_compute_budget_counts_each_recurrent_step(migrated):
    """An LSTM of 8 units over 100,000 steps has few multiply-adds per sample, but every step is
    a few NumPy calls for each batch: 2 samples for 100,000 epochs took 2 s an epoch and would
    have held a worker for its whole time limit. Each step of a batch counts as STEP_COST."""
    app = create_app(migrated)
    body = {"model": {"input_shape": [100_000, 1], "loss": "mse",
                      "layers": [{"type": "lstm", "units": 8}, {"type": "dense", "units": 1}]},
            "training": {"epochs": 100_000, "batch_size": 2},
            "dataset": {"features": np.zeros((2, 100_000, 1)).tolist(), "targets": [0.0, 1.0]}}
    resp = app.test_client().post("/v1/jobs", json=body)
    out = resp.get_json()
    assert resp.status_code == 422 and out["code"] == "compute_budget_exceeded", out
    assert out["compute"] > 100_000 * 100_000 * 100_000
    assert "100000 steps per batch that run one after another" in out["detail"]
    app.extensions["backprop"]["engine"].dispose()


def trained_on_iris(app):
    """(a test client, a job trained on iris that predicts 100 rows within the limits, iris)."""
    client = app.test_client()
    job_id = client.post("/v1/jobs", json=iris_job(epochs=1)).get_json()["id"]
    run_job(app.extensions["backprop"]["sessions"], job_id)
    x, _ = iris()
    assert client.post(f"/v1/jobs/{job_id}/predict", json={"inputs": x[:100].tolist()}).status_code == 200
    return client, job_id, x


def test_predict_answers_are_limited_in_size(migrated):
    """5000 rows through an 8192-way softmax answered 942 MB of JSON and took the web process
    to 3.7 GB; rows x outputs is now bounded, checked before the rows are read."""
    app = _limited(migrated, max_predict_values=300)
    client, job_id, x = trained_on_iris(app)
    resp = client.post(f"/v1/jobs/{job_id}/predict", json={"instances": x[:101].tolist()})
    assert resp.status_code == 422 and resp.get_json()["errors"][0]["path"] == "instances"
    detail = resp.get_json()["detail"]
    assert "101 rows x 3 outputs" in detail and "BACKPROP_MAX_PREDICT_VALUES" in detail
    assert client.post("/v1/models", json={"name": "iris", "job_id": job_id}).status_code == 201
    assert client.post("/v1/models/iris/predict", json={"inputs": x[:100].tolist()}).status_code == 200
    assert client.post("/v1/models/iris/predict", json={"inputs": x[:101].tolist()}).status_code == 422
    app.extensions["backprop"]["engine"].dispose()


def test_predict_compute_is_limited_and_so_are_predictions_at_once(migrated):
    """A 21-layer conv net over 400 rows took 29 s of a web thread, and 16 such requests held
    every thread of the API for minutes, /livez included. Rows x the forward pass's
    multiply-adds is now bounded, and a process computes at most web_threads / 4 predictions at
    once; the others get 503 at once."""
    from core.nn import Network

    per_row = Network.from_spec(iris_job()["model"]).cost()[0]
    app = _limited(migrated, max_predict_compute=100 * per_row)
    client, job_id, x = trained_on_iris(app)
    resp = client.post(f"/v1/jobs/{job_id}/predict", json={"inputs": x[:101].tolist()})
    assert resp.status_code == 422 and resp.get_json()["errors"][0]["path"] == "inputs", resp.get_json()
    message = resp.get_json()["errors"][0]["message"]
    assert "BACKPROP_MAX_PREDICT_COMPUTE" in message and "send at most 100 rows" in message, message
    assert client.post("/v1/models", json={"name": "iris", "job_id": job_id}).status_code == 201
    slots = app.extensions["backprop"]["predictions"]
    taken = 0
    while slots.acquire(f"tenant-{taken}"):  # every slot busy with other requests
        taken += 1
    assert taken == max(1, migrated.web_threads // 4)
    for url in (f"/v1/jobs/{job_id}/predict", "/v1/models/iris/predict"):
        resp = client.post(url, json={"inputs": x[:2].tolist()})
        assert resp.status_code == 503 and resp.get_json()["code"] == "too_many_predictions", url
        assert resp.headers["Retry-After"] == "1"
    slots.release("tenant-0")
    assert client.post("/v1/models/iris/predict", json={"inputs": x[:2].tolist()}).status_code == 200
    app.extensions["backprop"]["engine"].dispose()


def test_one_tenant_holds_at_most_half_the_prediction_slots(secured):
    """A loop of large predictions from one key, within every limit, held each of a process's
    prediction slots: every other tenant's predictions were 503. A tenant now holds at most half."""
    mallory, victim = key_for(secured, "mallory"), key_for(secured, "victim")
    client = secured.test_client()
    jobs = {}
    for who, headers in (("mallory", mallory), ("victim", victim)):
        jobs[who] = client.post("/v1/jobs", json=iris_job(epochs=1), headers=headers).get_json()["id"]
        run_job(secured.extensions["backprop"]["sessions"], jobs[who])
    slots = secured.extensions["backprop"]["predictions"]
    assert slots.total >= 2 and slots.per_tenant == slots.total // 2
    for _ in range(slots.per_tenant):  # mallory's predictions, busy
        assert slots.acquire("mallory")
    rows = {"inputs": iris()[0][:2].tolist()}
    resp = client.post(f"/v1/jobs/{jobs['mallory']}/predict", json=rows, headers=mallory)
    assert resp.status_code == 503 and resp.get_json()["code"] == "too_many_predictions"
    assert client.post(f"/v1/jobs/{jobs['victim']}/predict", json=rows, headers=victim).status_code == 200


def test_active_jobs_per_tenant_are_limited(migrated, monkeypatch):
    app = _limited(migrated, max_active_jobs=2)
    c = app.test_client()
    assert [c.post("/v1/jobs", json=iris_job(epochs=1)).status_code for _ in range(2)] == [202, 202]
    # refused before its data is read and stored (the locked count comes last, for the insert)
    import app.jobs as jobs
    monkeypatch.setattr(jobs, "numeric_array", lambda *a, **k: pytest.fail("the data was read"))
    resp = c.post("/v1/jobs", json=iris_job(epochs=1))
    assert resp.status_code == 429 and resp.get_json()["code"] == "too_many_active_jobs"
    assert resp.headers["Retry-After"]
    app.extensions["backprop"]["engine"].dispose()


def test_rate_limit_answers_429_with_retry_after(migrated):
    app = _limited(migrated, rate_limit="3 per minute")
    c = app.test_client()
    codes = [c.get("/v1/jobs").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    resp = c.get("/v1/jobs")
    assert resp.mimetype == "application/problem+json" and int(resp.headers["Retry-After"]) > 0
    assert c.get("/livez").status_code == 200  # probes are not rate limited
    app.extensions["backprop"]["engine"].dispose()


def test_rate_limit_is_one_budget_for_every_route(migrated):
    """Per key, not per key and route: with a budget per route, a key could make (number of
    routes) x the rate."""
    app = _limited(migrated, rate_limit="4 per minute")
    c = app.test_client()
    codes = [c.get(path).status_code for path in ("/v1/jobs", "/v1/datasets", "/v1/models", "/v1/jobs/x",
                                                  "/v1/datasets/y", "/v1/models")]
    assert codes == [200, 200, 200, 404, 429, 429]
    app.extensions["backprop"]["engine"].dispose()


def test_rate_limit_is_shared_through_redis(migrated, redis_url):
    limited = dataclasses.replace(migrated, rate_limit="3 per minute", broker_url=redis_url, auth="off")
    first, second = create_app(limited), create_app(limited)  # two API processes, one budget
    codes = [app.test_client().get("/v1/jobs").status_code for app in (first, second, first, second)]
    assert codes == [200, 200, 200, 429]
    for app in (first, second):
        app.extensions["backprop"]["engine"].dispose()


def test_request_body_limit_413_also_for_chunked_bodies(migrated):
    app = _limited(migrated, max_request_bytes=2000)
    c = app.test_client()
    resp = c.post("/v1/jobs", json=iris_job())
    assert resp.status_code == 413 and resp.mimetype == "application/problem+json"
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        payload = json.dumps(iris_job()).encode()
        conn.putrequest("POST", "/v1/jobs")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        for i in range(0, len(payload), 1000):
            part = payload[i:i + 1000]
            conn.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        conn.send(b"0\r\n\r\n")
        resp = conn.getresponse()
        assert resp.status == 413
        assert json.loads(resp.read())["code"] == "request_too_large"
    finally:
        server.shutdown()
        app.extensions["backprop"]["engine"].dispose()


@pytest.mark.parametrize("field, value", [("status", "succeeded"), ("tenant", "other"), ("weights", {}),
                                          ("id", "0" * 32), ("attempts", 0)])
def test_server_fields_set_by_a_client_are_refused(client, field, value):
    resp = client.post("/v1/jobs", json={**iris_job(epochs=1), field: value})
    assert resp.status_code == 422
    assert resp.get_json()["errors"][0] == {"path": field, "message": "unknown field"}


@pytest.mark.parametrize("raw, content_type, status", [
    ('{"model": NaN}', "application/json", 400),
    ('{"model": Infinity}', "application/json", 400),
    ("[" * 10000 + "]" * 10000, "application/json", 400),
    ('{"model": {}}', "text/plain", 415),
    ('{"model": {}}', "application/x-www-form-urlencoded", 415),
    ("\xff\xfe", "application/json", 400),
    ("[]", "application/json", 422),
    ("null", "application/json", 422),
])
def test_hostile_json_is_a_4xx(client, raw, content_type, status):
    resp = client.post("/v1/jobs", data=raw.encode("latin-1"), content_type=content_type)
    assert resp.status_code == status, resp.get_json()
    assert resp.mimetype == "application/problem+json"


def _with_layer_name(name: str) -> dict:
    body = iris_job(epochs=1)
    body["model"]["layers"][0]["name"] = name
    return body


def _labelled(*labels: str) -> dict:
    body = iris_job(epochs=1)
    body["dataset"]["targets"] = [labels[int(t)] for t in body["dataset"]["targets"]]
    return body


LONE = "\ud800"  # half of a UTF-16 pair, alone: not a character, and no UTF-8 text can hold it


@pytest.mark.parametrize("url, body, path", [
    ("/v1/jobs", _with_layer_name(LONE + "x"), "model.layers[0].name"),
    ("/v1/jobs", {**iris_job(epochs=1), "init_from": "x", "freeze": ["dense_0", "\udfff"]}, "freeze[1]"),
    ("/v1/jobs", _labelled(LONE, "b", "c"), "dataset.targets[0]"),
    ("/v1/jobs", {**iris_job(epochs=1), "dataset": {**iris_job()["dataset"],
                                                     "feature_names": ["a", "b", "c", "d" + LONE]}},
     "dataset.feature_names[3]"),
    ("/v1/jobs", {**iris_job(epochs=1), "training": {LONE: 1}}, "training.\\ud800"),
    ("/v1/jobs", {**iris_job(epochs=1), "dataset_id": LONE}, "dataset_id"),
    ("/v1/datasets", {**_labelled("a", LONE, "c")["dataset"]}, "targets[50]"),
    ("/v1/datasets", {**iris_job()["dataset"], "name": "n" + LONE}, "name"),
])
def test_lone_surrogates_are_refused_in_every_string_of_a_body(client, sessions, url, body, path):
    """A layer named "\\ud800x" was accepted (202) and its job then failed on SQLite ("'utf-8'
    codec can't encode character"); class labels holding one were stored, on SQLite and
    PostgreSQL. Every string and key of a JSON body is checked where the body is read: a 422
    naming its path, before anything is stored."""
    resp = client.post(url, data=json.dumps(body), content_type="application/json")
    assert resp.status_code == 422, resp.get_json()
    error = resp.get_json()["errors"][0]
    assert error["path"] == path and "lone UTF-16 surrogate" in error["message"], error
    with sessions() as s:
        assert s.scalar(select(Job)) is None and s.scalar(select(Dataset)) is None


def test_lone_surrogates_are_refused_however_the_body_is_encoded(client, sessions):
    """json.loads also reads a surrogate from its UTF-8-style bytes (ED A0 80) and from a UTF-16
    body, where the NUL check's strict decoding of the body then raised: a 500."""
    raw = json.dumps(_with_layer_name("a-b"))
    for data in (raw.replace("a-b", "a\\udc00b").encode(),
                 raw.encode().replace(b"a-b", b"a\xed\xa0\x80b"),
                 raw.replace("a-b", "a" + LONE + "b").encode("utf-16-le", "surrogatepass"),
                 raw.replace("a-b", "a" + LONE + "b").encode("utf-32", "surrogatepass")):
        resp = client.post("/v1/jobs", data=data, content_type="application/json")
        assert resp.status_code == 422, (data[:20], resp.get_json())
        assert resp.get_json()["errors"][0]["path"] == "model.layers[0].name"
    with sessions() as s:
        assert s.scalar(select(Job)) is None
    # a pair is one character, as escapes, in UTF-8 or in UTF-16: accepted, and read back as sent
    for data in (json.dumps(_labelled("\U0001F600", "b", "c")).encode(),
                 json.dumps(_labelled("\U0001F600", "b", "c"), ensure_ascii=False).encode("utf-16")):
        resp = client.post("/v1/jobs", data=data, content_type="application/json")
        assert resp.status_code == 202, resp.get_json()
        dataset = client.get(f"/v1/datasets/{resp.get_json()['dataset_id']}").get_json()
        assert dataset["class_labels"] == ["b", "c", "\U0001F600"]


def test_the_surrogate_prefilter_passes_pairs_and_misses_no_lone_half():
    """json.dumps writes an emoji as two escapes, a surrogate pair, so the byte filter matched
    and a 60 MB body with one emoji label was walked string by string (+2.45 s). The filter now
    passes pairs, and must still flag every body that holds a lone half, whatever backslashes
    come before it: checked against the parsed document on random string literals."""
    from app.schemas import _may_hold_lone_surrogate, _surrogate_at

    assert not _may_hold_lone_surrogate(json.dumps({"targets": ["\U0001F600", "é", "b"] * 3}).encode())
    assert not _may_hold_lone_surrogate(b'["\\\\ud800"]')  # an escaped backslash, then text
    pieces = ["\\", "\\\\", "\\ud83d", "\\ude00", "\\ud800", "\\udbff", "\\udc00", "\\uD83D",
              "\\uDE00", "ud83d", "a", "\\u00e9", "\\n", "\U0001F600"]
    rng = random.Random(7)
    flagged = lone = 0
    for _ in range(3000):
        literal = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))
        raw = f'{{"k": ["{literal}"]}}'.encode()
        try:
            doc = json.loads(raw)
        except ValueError:
            continue  # an odd run of backslashes before the quote: not JSON
        has_lone = _surrogate_at(doc) is not None
        flag = _may_hold_lone_surrogate(raw)
        assert flag or not has_lone, raw
        flagged += flag
        lone += has_lone
    assert lone > 500 and flagged < 3000  # both kinds were drawn


def test_uploaded_datasets_meet_the_same_size_limits(migrated):
    app = _limited(migrated, max_rows=5)
    csv = "a,b,y\n" + "".join(f"{i},{i},{i % 2}\n" for i in range(6))
    resp = app.test_client().post("/v1/datasets?target=y", data=csv, content_type="text/csv")
    assert resp.status_code == 422 and "limit is 5" in resp.get_json()["detail"]
    app.extensions["backprop"]["engine"].dispose()


def test_made_up_keys_share_the_address_budget_and_retry_after_is_only_on_429(migrated):
    app = create_app(dataclasses.replace(migrated, auth="on", rate_limit="3 per minute"))
    c = app.test_client()
    codes = [c.get("/v1/jobs", headers={"Authorization": f"Bearer bp_x{i}_y"}).status_code for i in range(4)]
    assert codes == [401, 401, 401, 429]
    good = key_for(app, "acme")  # a valid key has a budget of its own
    ok = c.get("/v1/jobs", headers=good)
    assert ok.status_code == 200 and "Retry-After" not in ok.headers
    app.extensions["backprop"]["engine"].dispose()


def test_odd_ids_and_parameters_are_4xx_on_postgres(migrated, postgres_url):
    from tests.conftest import migrate

    migrate(postgres_url)
    app = create_app(dataclasses.replace(migrated, database_url=postgres_url, auth="off"))
    c = app.test_client()
    try:
        for path in ("/v1/jobs/%00", "/v1/datasets/a%00b", "/v1/models/a%00b"):
            assert c.get(path).status_code == 404, path
        assert c.get("/v1/jobs?status=%00").status_code == 400
        assert c.get("/v1/jobs/x/epochs?after=" + "9" * 30).status_code == 422
        body = json.dumps({**iris_job(epochs=1), "dataset": {"features": [[1, 2, 3, 4]], "targets": [0],
                                                             "feature_names": ["a\u0000", "b", "c", "d"]}})
        resp = c.post("/v1/jobs", data=body, content_type="application/json")
        assert resp.status_code == 422 and resp.get_json()["errors"][0]["path"] == "dataset.feature_names[0]"
        job_id = c.post("/v1/jobs", json=iris_job(epochs=1)).get_json()["id"]
        resp = c.get(f"/v1/jobs/{job_id}/events?after=1", headers={"Last-Event-ID": "\u00b2"})
        assert resp.status_code == 200  # a non-ASCII "digit" is ignored, not a 500
        resp.close()
        cursor = base64.urlsafe_b64encode(b"2030-01-01T00:00:00+00:00|\x00").decode().rstrip("=")
        for listing in ("/v1/jobs", "/v1/datasets"):  # a tampered cursor with a NUL in its id
            resp = c.get(f"{listing}?next={cursor}")
            assert resp.status_code == 422 and resp.get_json()["errors"][0]["path"] == "next", listing
    finally:
        app.extensions["backprop"]["engine"].dispose()


def test_a_parent_or_dataset_deleted_during_a_submit_is_a_4xx_on_postgres(migrated, postgres_url, monkeypatch):
    """PostgreSQL lets a delete commit between a submit's checks and its insert (SQLite's
    IMMEDIATE transactions do not): the insert's foreign key then failed, which was a 500."""
    import app.jobs as jobs_module
    from tests.conftest import migrate

    migrate(postgres_url)
    app = create_app(dataclasses.replace(migrated, database_url=postgres_url, auth="off"))
    c = app.test_client()
    sessions = app.extensions["backprop"]["sessions"]
    doomed: list = []  # (table, id) rows that another request deletes while the submit runs
    budget = jobs_module.check_training_cost

    def deleted_meanwhile(*args):  # called after the submit's checks, before its insert
        budget(*args)
        with sessions.begin() as s:
            for table, row_id in doomed:
                if table is Job:
                    s.execute(delete(EpochRecord).where(EpochRecord.job_id == row_id))
                    s.execute(delete(WeightArray).where(WeightArray.job_id == row_id))
                s.execute(delete(table).where(table.id == row_id))
        doomed.clear()

    monkeypatch.setattr(jobs_module, "check_training_cost", deleted_meanwhile)
    try:
        parent = c.post("/v1/jobs", json=iris_job(epochs=1)).get_json()["id"]
        run_job(sessions, parent)
        doomed.append((Job, parent))
        resp = c.post("/v1/jobs", json={**iris_job(epochs=1), "init_from": parent})
        assert resp.status_code == 404 and resp.get_json()["code"] == "job_not_found", resp.get_json()

        x, y = iris()
        dataset = c.post("/v1/datasets", json={"features": x.tolist(), "targets": y.tolist()}).get_json()["id"]
        doomed.append((Dataset, dataset))
        resp = c.post("/v1/jobs", json={**iris_job(epochs=1), "dataset": None, "dataset_id": dataset})
        assert resp.status_code == 422 and resp.get_json()["errors"][0]["path"] == "dataset_id", resp.get_json()
        assert c.post("/v1/jobs", json=iris_job(epochs=1)).status_code == 202  # nothing deleted: accepted
    finally:
        app.extensions["backprop"]["engine"].dispose()


def test_event_streams_leave_threads_for_everything_else(migrated):
    app = create_app(dataclasses.replace(migrated, web_threads=4))  # room for 2 streams
    job_id = app.test_client().post("/v1/jobs", json=iris_job(epochs=1)).get_json()["id"]
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def events():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", f"/v1/jobs/{job_id}/events")
        return conn, conn.getresponse()

    try:
        open_streams = [events() for _ in range(2)]
        assert [resp.status for _, resp in open_streams] == [200, 200]
        for _, resp in open_streams:
            resp.readline()  # the stream has started and holds its slot
        conn, refused = events()
        assert refused.status == 503 and json.loads(refused.read())["code"] == "too_many_streams"
        assert refused.getheader("Retry-After")
        conn.close()
        for conn, _ in open_streams:
            conn.close()  # a closed connection gives its slot back at the next write
        assert app.test_client().get("/livez").status_code == 200
    finally:
        server.shutdown()
        app.extensions["backprop"]["engine"].dispose()


def test_one_tenant_cannot_hold_every_event_stream(migrated):
    """Streams last minutes and clients reconnect: one tenant's ten streams took every slot, and
    every other tenant got 503 too_many_streams. A tenant may hold a quarter of the threads."""
    app = create_app(dataclasses.replace(migrated, web_threads=8, auth="on"))  # 4 streams, 2 a tenant
    keys = {t: key_for(app, t) for t in ("greedy", "other")}
    jobs = {t: app.test_client().post("/v1/jobs", json=iris_job(epochs=1), headers=k).get_json()["id"]
            for t, k in keys.items()}
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def events(tenant):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", f"/v1/jobs/{jobs[tenant]}/events", headers=keys[tenant])
        resp = conn.getresponse()
        if resp.status == 200:
            resp.readline()  # started: it holds its slot
        return conn, resp

    opened = []
    try:
        opened = [events("greedy") for _ in range(2)]
        assert [resp.status for _, resp in opened] == [200, 200]
        conn, refused = events("greedy")
        assert refused.status == 503 and json.loads(refused.read())["code"] == "too_many_streams"
        conn.close()
        opened.append(events("other"))
        assert opened[-1][1].status == 200  # a slot was left for another tenant
    finally:
        for conn, _ in opened:
            conn.close()
        server.shutdown()
        app.extensions["backprop"]["engine"].dispose()


def test_event_streams_that_never_start_give_their_slot_back(migrated):
    """A HEAD request, or a client that leaves before reading, never runs the stream's body:
    the slot must still come back, or a few such requests shut the stream out for good."""
    app = create_app(dataclasses.replace(migrated, web_threads=2))  # room for 1 stream
    job_id = app.test_client().post("/v1/jobs", json=iris_job(epochs=1)).get_json()["id"]
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def request(method):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request(method, f"/v1/jobs/{job_id}/events")
        resp = conn.getresponse()
        status = resp.status
        conn.close()
        return status

    def settled(method):
        """The slot comes back when the server closes the response, just after the client has
        it: a request sent at once may find the slot still taken. A slot that leaks stays
        taken, and this gives up on it after 5 s."""
        deadline = time.monotonic() + 5
        while (status := request(method)) == 503 and time.monotonic() < deadline:
            time.sleep(0.02)
        return status

    try:
        for _ in range(3):
            assert settled("HEAD") == 200
        assert settled("GET") == 200  # the one slot is still free after three HEADs
    finally:
        server.shutdown()
        app.extensions["backprop"]["engine"].dispose()


def test_with_keys_off_other_sites_cannot_reach_the_api(migrated):
    """Keys off is allowed only on loopback, but a web page the developer opens can reach
    loopback: a form posted a dataset (no CORS preflight for multipart), and DNS rebinding let a
    page read every answer. Requests that name another Host, or a change from another Origin,
    are refused."""
    app = create_app(dataclasses.replace(migrated, auth="off"))
    c = app.test_client()
    resp = c.get("/v1/jobs", headers={"Host": "rebind.evil.example:8000"})
    assert resp.status_code == 403 and resp.get_json()["code"] == "forbidden_host"
    resp = c.post("/v1/jobs", json=iris_job(epochs=1), headers={"Origin": "http://evil.example"})
    assert resp.status_code == 403 and resp.get_json()["code"] == "cross_origin"
    for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000"):
        assert c.get("/v1/jobs", headers={"Host": host}).status_code == 200, host
    same = c.post("/v1/jobs", json=iris_job(epochs=1), headers={"Origin": "http://localhost"})
    assert same.status_code == 202  # the dashboard, from the API's own origin
    secured = create_app(dataclasses.replace(migrated, auth="on"))  # with keys, a key decides
    assert secured.test_client().get("/v1/jobs", headers={"Host": "api.example.com"}).status_code == 401
    for application in (app, secured):
        application.extensions["backprop"]["engine"].dispose()
