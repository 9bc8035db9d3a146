"""Whole-object answers are bounded: a job's weights as JSON (the .npz has no bound, and is sent
one array at a time), and its diagnostics (the norms of a thinned set of epochs, the flags from
all of them). The jobs are written straight into the test database: no big model is trained."""

from __future__ import annotations

import io
import json
import math
import tracemalloc

import numpy as np
import pytest
from sqlalchemy import update

import app.jobs as jobs
from core.db import EpochRecord, Job, JobStatus, WeightArray
from core.store import pack
from tests.data import iris_job

PROBLEM = "application/problem+json"


def finished_job(client, sessions, model: dict, weights: dict[str, np.ndarray] | None = None,
                 epochs: list[EpochRecord] | None = None, rows: int = 4) -> str:
    """A job as a worker leaves it: submitted for real (so it is valid), then marked succeeded
    with the given weights and epochs written straight into the database."""
    n_inputs = model["input_shape"][0]
    body = {"model": model, "training": {"epochs": max(1, len(epochs or []))},
            "dataset": {"features": np.zeros((rows, n_inputs)).tolist(), "targets": [0.0] * rows}}
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 202, resp.get_json()
    job_id = resp.get_json()["id"]
    with sessions.begin() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.SUCCEEDED,
                                                             epochs_done=len(epochs or [])))
        for name, a in (weights or {}).items():
            dtype, shape, data = pack(a)
            s.add(WeightArray(job_id=job_id, name=name, dtype=dtype, shape=shape, data=data))
        for record in epochs or []:
            record.job_id = job_id
            s.add(record)
    return job_id


def dense_model(inputs: int, units: int) -> dict:
    return {"input_shape": [inputs], "loss": "mse",
            "layers": [{"type": "dense", "units": units, "activation": "relu"}, {"type": "dense", "units": 1}]}


def dense_weights(inputs: int, units: int, dtype=np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"dense_0/kernel": rng.normal(size=(inputs, units)).astype(dtype), "dense_0/bias": np.ones(units, dtype),
            "dense_1/kernel": rng.normal(size=(units, 1)).astype(dtype), "dense_1/bias": np.zeros(1, dtype)}


# -- weights -------------------------------------------------------------------------------------


def test_json_weights_past_the_bound_are_a_422_pointing_at_npz(client, sessions, monkeypatch):
    """A 16.8M-value job's weights as JSON were 359 MB, 11 s and a 1.6 GB peak; three at once
    3.2 GB. Past MAX_JSON_WEIGHT_VALUES the JSON form is refused, from the stored shapes alone
    (the arrays are not read), and the .npz is offered."""
    weights = dense_weights(3, 8)  # 3*8 + 8 + 8 + 1 = 41 values
    job_id = finished_job(client, sessions, dense_model(3, 8), weights)
    monkeypatch.setattr(jobs, "MAX_JSON_WEIGHT_VALUES", 41)
    assert client.get(f"/v1/jobs/{job_id}/weights").status_code == 200  # at the bound: answered

    monkeypatch.setattr(jobs, "MAX_JSON_WEIGHT_VALUES", 40)
    monkeypatch.setattr(jobs, "load_weights", lambda *a: pytest.fail("the arrays were read for a refusal"))
    resp = client.get(f"/v1/jobs/{job_id}/weights")
    body = resp.get_json()
    assert resp.status_code == 422 and resp.mimetype == PROBLEM and body["code"] == "response_too_large", body
    assert body["errors"] == [{"path": "format", "message": "the weights hold 41 values; a JSON answer may hold "
                                                            "at most 40: download them as ?format=npz"}]
    assert body["values"] == 41 and body["limit"] == 40 and "format=npz" in body["detail"]

    npz = client.get(f"/v1/jobs/{job_id}/weights?format=npz")  # whatever the size
    assert npz.status_code == 200 and npz.mimetype == "application/octet-stream"
    assert npz.headers["Content-Disposition"] == f"attachment; filename=job-{job_id}-weights.npz"
    with np.load(io.BytesIO(npz.data), allow_pickle=False) as arrays:
        assert arrays.files == list(weights)  # in network order
        for name, a in weights.items():
            assert arrays[name].dtype == a.dtype and np.array_equal(arrays[name], a)


def test_the_default_bound_and_an_npz_sent_one_array_at_a_time(client, sessions, tmp_path):
    """2.5 million values: over the default bound as JSON; as .npz the process holds about one
    array's stored bytes at a time, never all of them several times over nor as Python numbers,
    and the file is what np.load reads (float64 and float32 alike)."""
    assert jobs.MAX_JSON_WEIGHT_VALUES == 2_000_000
    weights = {**dense_weights(1000, 2500), "dense_1/bias": np.array([0.5])}  # a float64 among float32
    job_id = finished_job(client, sessions, dense_model(1000, 2500), weights)
    resp = client.get(f"/v1/jobs/{job_id}/weights")
    assert resp.status_code == 422 and resp.get_json()["values"] == 1000 * 2500 + 2500 + 2500 + 1

    kernel_bytes = weights["dense_0/kernel"].nbytes  # 10 MB
    path = tmp_path / "weights.npz"
    tracemalloc.start()
    try:
        resp = client.get(f"/v1/jobs/{job_id}/weights?format=npz", buffered=False)
        with path.open("wb") as f:
            for chunk in resp.response:
                f.write(chunk)
        resp.close()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert resp.status_code == 200
    assert peak < 1.6 * kernel_bytes, (peak, kernel_bytes)  # built whole, it held them 3 times over
    assert int(resp.headers["Content-Length"]) == path.stat().st_size  # a download cut short shows
    with np.load(path, allow_pickle=False) as arrays:
        assert arrays.files == list(weights)
        for name, a in weights.items():
            assert arrays[name].dtype == a.dtype and np.array_equal(arrays[name], a)


def test_an_npz_says_its_size_for_any_dtypes_and_shapes(client, sessions):
    """A streamed .npz had no Content-Length: a stream that stopped early (the job deleted
    meanwhile) ended cleanly through an HTTP/1.0 hop. Its size is known before it is sent."""
    job_id = finished_job(client, sessions, dense_model(3, 8), {
        "dense_0/kernel": np.arange(24, dtype=np.float32).reshape(3, 8), "dense_0/bias": np.zeros(0, np.float64),
        "dense_1/kernel": np.full((8, 1), 2.5), "dense_1/bias": np.ones(1, np.float32)})
    resp = client.get(f"/v1/jobs/{job_id}/weights?format=npz")
    assert resp.status_code == 200 and int(resp.headers["Content-Length"]) == len(resp.data)
    with np.load(io.BytesIO(resp.data), allow_pickle=False) as arrays:
        assert arrays["dense_0/bias"].shape == (0,) and arrays["dense_1/kernel"][0, 0] == 2.5


def test_weights_of_a_job_without_any_are_still_a_409_in_either_format(client, sessions):
    job_id = finished_job(client, sessions, dense_model(3, 8))
    for query in ("", "?format=npz"):
        resp = client.get(f"/v1/jobs/{job_id}/weights{query}")
        assert resp.status_code == 409 and resp.get_json()["code"] == "no_weights", query


# -- diagnostics ---------------------------------------------------------------------------------


def history(epochs: int, names=("dense_0", "dense_1", "dense_2"), frozen=("dense_2",),
            spikes: dict[tuple[str, int], float | None] | None = None) -> list[EpochRecord]:
    """Steady norms of 1.0 (0.5 for the weights), except `spikes` {(layer, epoch): norm}."""
    spikes = spikes or {}
    return [EpochRecord(epoch=e, loss=1.0, metrics={"mae": 1.0, "r2": 0.0}, duration=0.01,
                        grad_norms={n: spikes.get((n, e), 1.0) for n in names if n not in frozen},
                        weight_norms={n: 0.5 for n in names})
            for e in range(1, epochs + 1)]


def three_layers() -> dict:
    return {"input_shape": [2], "loss": "mse", "layers": [{"type": "dense", "units": 2, "activation": "relu"},
                                                          {"type": "dense", "units": 2}, {"type": "dense", "units": 1}]}


def diagnostics(client, job_id: str, query: str = "") -> dict:
    resp = client.get(f"/v1/jobs/{job_id}/diagnostics{query}")
    assert resp.status_code == 200, resp.get_json()
    return json.loads(resp.get_data(as_text=True))  # strict: no NaN or Infinity


def test_diagnostics_answer_a_thinned_run_and_flag_it_all(client, sessions):
    """64 dense layers over 20,000 epochs answered 52 MB of JSON (+420 MB). The norms now come
    for at most max_points epochs (1000 by default), spread over the run with the first and
    last kept, as /epochs?max_points gives them; the flags still read every epoch, here an
    explosion in epoch 2 and an overflow in epoch 3 that no thinned epoch shows."""
    spikes = {("dense_0", 2): 500.0, ("dense_1", 3): None}
    job_id = finished_job(client, sessions, three_layers(), epochs=history(5000, spikes=spikes))
    d = diagnostics(client, job_id)
    assert d["total"] == 5000 and d["downsampled"] is True
    assert len(d["epochs"]) == 1000 and d["epochs"][0] == 1 and d["epochs"][-1] == 5000
    assert 2 not in d["epochs"] and 3 not in d["epochs"]
    assert d["epochs"] == sorted(d["epochs"])
    for layer in d["layers"]:
        assert len(layer["grad_norms"]) == len(layer["weight_norms"]) == 1000
    assert [(x["layer"], x["frozen"]) for x in d["layers"]] == [("dense_0", False), ("dense_1", False),
                                                                 ("dense_2", True)]
    assert set(d["layers"][2]["grad_norms"]) == {None}
    flags = [(f["kind"], f["layer"]) for f in d["flags"]]
    assert flags == [("exploding_gradients", "dense_0"), ("exploding_gradients", "dense_1")]
    assert "in epoch 2, 500 times" in d["flags"][0]["message"]
    assert "beyond float range in epoch 3" in d["flags"][1]["message"]

    few = diagnostics(client, job_id, "?max_points=10")
    assert len(few["epochs"]) == 10 and few["epochs"][0] == 1 and few["epochs"][-1] == 5000
    assert few["flags"] == d["flags"] and few["total"] == 5000


def test_diagnostics_of_a_short_run_are_whole_and_match_the_flag_rules(client, sessions):
    spikes = {("dense_1", 40): 0.0, ("dense_0", 3): 150.0}
    records = history(40, spikes=spikes)
    job_id = finished_job(client, sessions, three_layers(), epochs=records)
    d = diagnostics(client, job_id)
    assert d["total"] == 40 and d["downsampled"] is False and d["epochs"] == list(range(1, 41))
    grads = {n: [r.grad_norms[n] for r in records] for n in ("dense_0", "dense_1")}
    assert d["layers"][0]["grad_norms"] == grads["dense_0"]
    assert d["flags"] == jobs.gradient_flags(["dense_0", "dense_1"], grads, list(range(1, 41)),
                                             {"dense_0": "relu", "dense_1": "linear"})
    assert [f["kind"] for f in d["flags"]] == ["exploding_gradients", "no_gradient"]


@pytest.mark.parametrize("query, message", [("?max_points=1", "greater than or equal to 2"),
                                            ("?max_points=10001", "less than or equal to 10000"),
                                            ("?max_points=x", "valid integer")])
def test_diagnostics_parameters_are_checked(client, sessions, query, message):
    job_id = finished_job(client, sessions, three_layers(), epochs=history(3))
    resp = client.get(f"/v1/jobs/{job_id}/diagnostics{query}")
    assert resp.status_code == 422 and resp.mimetype == PROBLEM
    error = resp.get_json()["errors"][0]
    assert error["path"] == "max_points" and message in error["message"], error


def test_diagnostics_stay_within_their_bound_of_values_however_many_layers(client, sessions, monkeypatch):
    """Layers x epochs x 2 norms is bounded too (DIAGNOSTICS_MAX_VALUES), for servers allowing
    many layers: the default shrinks to fit, a max_points asked for past it is a 422 saying how
    many fit."""
    monkeypatch.setattr(jobs, "DIAGNOSTICS_MAX_VALUES", 60)  # 3 layers x 2 norms: 10 epochs
    job_id = finished_job(client, sessions, three_layers(), epochs=history(50))
    d = diagnostics(client, job_id)
    assert len(d["epochs"]) == 10 and d["downsampled"] is True and d["total"] == 50
    assert len(diagnostics(client, job_id, "?max_points=10")["epochs"]) == 10
    resp = client.get(f"/v1/jobs/{job_id}/diagnostics?max_points=11")
    assert resp.status_code == 422
    assert resp.get_json()["errors"] == [{"path": "max_points", "message": "11 epochs x 3 layers x 2 norms would "
                                                                           "be more than 60 values; at most 10 "
                                                                           "for this job"}]
    short = finished_job(client, sessions, three_layers(), epochs=history(5))  # 5 epochs fit whatever is asked
    d = diagnostics(client, short, "?max_points=10000")
    assert len(d["epochs"]) == 5 and d["downsampled"] is False


def test_diagnostics_read_the_history_a_block_at_a_time(client, sessions, monkeypatch):
    """The flags see every epoch across blocks: an explosion in the last block, a first epoch in
    the first."""
    monkeypatch.setattr(jobs, "DIAGNOSTICS_BATCH", 7)
    job_id = finished_job(client, sessions, three_layers(), epochs=history(30, spikes={("dense_1", 29): 1e3}))
    d = diagnostics(client, job_id, "?max_points=5")
    assert d["total"] == 30 and d["epochs"] == [1, 8, 15, 23, 30]
    assert [(f["kind"], f["layer"]) for f in d["flags"]] == [("exploding_gradients", "dense_1")]
    assert "in epoch 29, 1000 times" in d["flags"][0]["message"]
    assert math.isclose(d["layers"][1]["grad_norms"][-1], 1.0)


def test_the_dashboards_iris_job_is_unchanged(client, sessions):
    """A real run of 60 epochs: all of them, as before."""
    from worker.training import run_job

    job_id = client.post("/v1/jobs", json=iris_job()).get_json()["id"]
    run_job(sessions, job_id)
    d = diagnostics(client, job_id)
    assert d["epochs"] == list(range(1, 61)) and d["total"] == 60 and d["downsampled"] is False
