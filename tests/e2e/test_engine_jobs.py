"""A conv net and an LSTM trained through the API by a real worker process."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from .stack import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("engine-jobs"))
    try:
        yield s.up()
    finally:
        s.down()


def train(stack: Stack, body: dict) -> dict:
    status, job = stack.request("POST", "/v1/jobs", body)
    assert status == 202, job
    job = stack.wait_for_job(job["id"], timeout=180)
    assert job["status"] == "succeeded", (job["error"], stack.logs())
    return job


def test_conv_net_on_digits(stack):
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 8, 8, 1).round(3)
    train_x, train_y, test_x, test_y = x[:1200], y[:1200], x[1200:], y[1200:]
    job = train(stack, {
        "model": {"input_shape": [8, 8, 1], "loss": "categorical_crossentropy",
                  "layers": [{"type": "conv2d", "filters": 8, "kernel_size": 3, "padding": "same",
                              "activation": "relu"},
                             {"type": "max_pool2d", "pool_size": 2},
                             {"type": "flatten"},
                             {"type": "dense", "units": 10, "activation": "softmax"}]},
        "training": {"optimizer": {"type": "adam", "learning_rate": 0.01}, "epochs": 12, "batch_size": 32},
        "dataset": {"features": train_x.tolist(), "targets": train_y.tolist()}})
    status, weights = stack.request("GET", f"/v1/jobs/{job['id']}/weights")
    assert {w["name"]: w["shape"] for w in weights["weights"]}["conv2d_0/kernel"] == [3, 3, 1, 8]
    status, pred = stack.request("POST", f"/v1/jobs/{job['id']}/predict", {"instances": test_x.tolist()})
    assert status == 200
    accuracy = float(np.mean(np.array(pred["predictions"]) == test_y))
    assert accuracy >= 0.9, accuracy


def test_lstm_on_sequences(stack):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 12, 1)).round(3)
    y = (x[:, :, 0].sum(axis=1) > 0).astype(int)  # the sign of a running sum: needs the whole sequence
    job = train(stack, {
        "model": {"input_shape": [12, 1], "loss": "categorical_crossentropy",
                  "layers": [{"type": "lstm", "units": 16},
                             {"type": "dense", "units": 2, "activation": "softmax"}]},
        "training": {"optimizer": {"type": "adam", "learning_rate": 0.02}, "epochs": 25, "batch_size": 32,
                     "validation_split": 0.2},
        "dataset": {"features": x[:500].tolist(), "targets": y[:500].tolist()}})
    assert job["metrics"]["val_accuracy"] >= 0.85, job["metrics"]
    status, pred = stack.request("POST", f"/v1/jobs/{job['id']}/predict", {"inputs": x[500:].tolist()})
    assert float(np.mean(np.array(pred["predictions"]) == y[500:])) >= 0.85
