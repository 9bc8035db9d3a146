"""The predict cache: one shared inference network per model, answering concurrent requests (its
layers keep nothing of a batch), and a bound in bytes rather than in networks."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from app.predict import CachedModel, ModelCache, footprint
from app.schemas import PredictRequest
from core.nn import Network
from tests.app.test_models_api import trained

LSTM = {"input_shape": [5, 4], "loss": "categorical_crossentropy",
        "layers": [{"type": "lstm", "units": 16}, {"type": "dense", "units": 3, "activation": "softmax"}]}


CONV = {"input_shape": [8, 8, 1], "loss": "categorical_crossentropy",
        "layers": [{"type": "conv2d", "filters": 4, "kernel_size": 3, "activation": "relu"},
                   {"type": "max_pool2d"}, {"type": "batch_norm"}, {"type": "flatten"},
                   {"type": "dense", "units": 3, "activation": "softmax"}]}


@pytest.mark.parametrize("spec", [LSTM, CONV], ids=["lstm", "conv"])
def test_concurrent_predictions_on_one_model_get_their_own_answers(spec):
    """Eight threads share one model, with no lock: each request gets its own numbers back.
    (When layers kept their last batch, an LSTM gave 889 wrong answers in 2400 here.)"""
    model = CachedModel(Network.from_spec(spec, seed=1, inference=True), None)
    rng = np.random.default_rng(0)
    shape = tuple(spec["input_shape"])
    bodies = [PredictRequest(instances=rng.normal(size=(int(n), *shape)).tolist()) for n in rng.integers(1, 40, 24)]
    want = [model.predict(b)["probabilities"] for b in bodies]
    wrong = []

    def hammer(k):
        for i in range(60):
            j = (k * 5 + i) % len(bodies)
            if model.predict(bodies[j])["probabilities"] != want[j]:
                wrong.append(j)

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_footprint_counts_weights_and_what_a_training_batch_left():
    net = Network.from_spec(LSTM, seed=1)
    before = footprint(net)
    assert before >= net.flat_params.nbytes + net.flat_grads.nbytes
    net.logits(np.zeros((500, 5, 4), net.dtype), training=True)
    assert footprint(net) > before + 500 * 5 * 16 * 4  # kept for backward: the hidden states


def test_a_cached_model_is_its_weights_and_stays_that_size():
    cached = CachedModel(Network.from_spec(CONV, seed=1, inference=True), None)
    net = cached.net
    weights = net.flat_params.nbytes + sum(b.nbytes for b in net.buffers().values())
    assert weights <= cached.nbytes < weights + 1024  # no gradient vector
    cached.predict(PredictRequest(instances=np.zeros((300, 8, 8, 1)).tolist()))
    assert footprint(net) == cached.nbytes


def test_the_cache_is_bounded_in_bytes(client, sessions):
    from core.db import Job

    jobs = [trained(client, sessions) for _ in range(3)]
    with sessions() as session:
        size = ModelCache(max_bytes=1 << 40).get(session, session.get(Job, jobs[0])).nbytes
        cache = ModelCache(max_bytes=2 * size)
        for job_id in jobs:
            cache.get(session, session.get(Job, job_id))
        assert [j in cache for j in jobs] == [False, True, True]  # the least recently used went
        cache.get(session, session.get(Job, jobs[1]))  # used again: now the newest
        cache.get(session, session.get(Job, jobs[0]))
        assert [j in cache for j in jobs] == [True, True, False]
        tiny = ModelCache(max_bytes=1)
        assert tiny.get(session, session.get(Job, jobs[0])) is tiny.get(session, session.get(Job, jobs[0]))


def test_a_job_deleted_before_its_weights_are_read_is_a_404(client, sessions):
    """On PostgreSQL a delete can commit between predict finding the job and the cache reading
    its weights: that read finds none, which is a 404, not a 500 from building an empty model."""
    from sqlalchemy import delete

    from app.errors import ApiError
    from core.db import Job, WeightArray

    job_id = trained(client, sessions)
    with sessions() as session:
        job = session.get(Job, job_id)  # what the predict view found
        session.expunge(job)
    with sessions.begin() as other:  # the delete, committed meanwhile (its weights go with it)
        other.execute(delete(WeightArray).where(WeightArray.job_id == job_id))
    with sessions() as session, pytest.raises(ApiError) as exc:
        ModelCache(max_bytes=1 << 30).get(session, job)
    assert exc.value.status == 404 and job_id not in ModelCache(max_bytes=1 << 30)


def test_a_model_is_cached_without_running_its_initialisers(client, sessions, monkeypatch):
    """Each cache miss built the model with its initialisers, then replaced every value: a
    large orthogonal float64 kernel took seconds of a web thread on a model's first predict."""
    from core.nn import initializers

    job_id = trained(client, sessions)

    def refuse(*_args):
        raise AssertionError("an initialiser ran")

    monkeypatch.setattr("core.nn.layers.base.INITIALIZERS", dict.fromkeys(initializers.INITIALIZERS, refuse))
    resp = client.post(f"/v1/jobs/{job_id}/predict", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]})
    assert resp.status_code == 200, resp.get_json()
