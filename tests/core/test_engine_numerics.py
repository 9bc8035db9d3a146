"""Numerical behaviour: stability at extreme inputs, loss values against their formulas, dtype
preservation, and one SGD step worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.nn import Network, Trainer
from core.nn.activations import ACTIVATIONS, get_activation
from core.nn.losses import get_loss
from core.nn.optimizers import OPTIMIZERS

EXTREME = [-1000.0, -30.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 30.0, 1000.0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activations_are_stable_at_magnitude_1000(name, dtype):
    """pytest turns overflow/invalid warnings into errors, so this also proves there are none."""
    act = get_activation(name)
    z = np.array([EXTREME, EXTREME[::-1]], dtype=dtype)
    a = act.forward(z)
    da = act.backward(z, a, np.ones_like(z))
    assert a.dtype == dtype and da.dtype == dtype
    assert np.isfinite(a).all() and np.isfinite(da).all()


def test_activation_values_at_the_extremes():
    z = np.array([-1000.0, 0.0, 1000.0])
    f = {n: get_activation(n).forward(z) for n in ACTIVATIONS}
    np.testing.assert_allclose(f["sigmoid"], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(f["tanh"], [-1.0, 0.0, 1.0])
    np.testing.assert_allclose(f["softplus"], [0.0, math.log(2), 1000.0])
    np.testing.assert_allclose(f["elu"], [-1.0, 0.0, 1000.0])
    np.testing.assert_allclose(f["gelu"], [0.0, 0.0, 1000.0])
    np.testing.assert_allclose(f["leaky_relu"], [-10.0, 0.0, 1000.0])
    np.testing.assert_allclose(f["softmax"], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(get_activation("gelu").forward(np.array([1.0])),
                               [0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * 1.044715))])


def _logits(k):
    return np.array([[1000.0] + [-1000.0] * (k - 1), [-1000.0] * (k - 1) + [1000.0], [0.0] * k])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropies_are_finite_for_huge_logits(dtype):
    z = _logits(3).astype(dtype)
    cce = get_loss("categorical_crossentropy")
    y = np.array([0, 0, 1])  # right, confidently wrong by 2000, uniform
    loss, dz, p = cce(get_activation("softmax"), z, y)
    assert np.isfinite(dz).all() and dz.dtype == dtype
    assert loss == pytest.approx((0.0 + 2000.0 + math.log(3)) / 3, rel=1e-6)

    bce = get_loss("binary_crossentropy")
    zb = np.array([[1000.0], [-1000.0], [1000.0], [0.0]], dtype=dtype)
    yb = np.array([[1.0], [0.0], [0.0], [1.0]], dtype=dtype)
    loss, dz, a = bce(get_activation("sigmoid"), zb, yb)
    assert np.isfinite(dz).all() and dz.dtype == dtype
    assert loss == pytest.approx((0 + 0 + 1000 + math.log(2)) / 4, rel=1e-6)
    np.testing.assert_allclose(dz[:, 0], [0.0, 0.0, 0.25, -0.125], atol=1e-7)


@pytest.mark.parametrize("loss", ["mse", "mae", "huber"])
def test_regression_losses_are_finite_for_huge_outputs(loss):
    z = np.array([[1000.0, -1000.0]], dtype=np.float32)
    value, dz, _ = get_loss(loss)(get_activation("linear"), z, np.zeros_like(z))
    assert math.isfinite(value) and np.isfinite(dz).all()


def test_loss_values_match_their_formulas():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(5, 3))
    y = rng.normal(size=(5, 3))
    w = rng.uniform(0.5, 2.0, size=5)
    lin = get_activation("linear")

    def wmean(per_sample, weights):
        return float((per_sample * weights).sum() / weights.sum())

    d = z - y
    huber = np.where(np.abs(d) <= 1, 0.5 * d * d, np.abs(d) - 0.5)
    for name, per in (("mse", d * d), ("mae", np.abs(d)), ("huber", huber)):
        assert get_loss(name)(lin, z, y)[0] == pytest.approx(per.mean(), rel=1e-12)
        assert get_loss(name)(lin, z, y, w)[0] == pytest.approx(wmean(per.mean(1), w), rel=1e-12)

    labels = rng.integers(0, 3, size=5)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    nll = -np.log(p[np.arange(5), labels])
    cce = get_loss("categorical_crossentropy")
    assert cce(get_activation("softmax"), z, labels)[0] == pytest.approx(nll.mean(), rel=1e-12)
    assert cce(get_activation("softmax"), z, labels, w)[0] == pytest.approx(wmean(nll, w), rel=1e-12)

    t = rng.integers(0, 2, size=(5, 3)).astype(float)
    s = 1 / (1 + np.exp(-z))
    bce_per = -(t * np.log(s) + (1 - t) * np.log(1 - s)).mean(axis=1)
    bce = get_loss("binary_crossentropy")
    assert bce(get_activation("sigmoid"), z, t)[0] == pytest.approx(bce_per.mean(), rel=1e-12)
    assert bce(get_activation("sigmoid"), z, t, w)[0] == pytest.approx(wmean(bce_per, w), rel=1e-12)


ALL_ACTIVATIONS_SPEC = {
    "input_shape": [3],
    "layers": [{"type": "dense", "units": 4, "activation": a}
               for a in ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "softplus",
                         "softmax", "linear")]
    + [{"type": "dense", "units": 3, "activation": "softmax", "l1": 1e-3, "l2": 1e-3}],
    "loss": "categorical_crossentropy",
}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_float32_stays_float32(optimizer):
    """No silent upcast anywhere: forward, gradients, optimizer slots, trained weights."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 3))  # float64 input is converted once
    y = rng.integers(0, 3, size=20)
    net = Network.from_spec(ALL_ACTIVATIONS_SPEC)
    assert net.dtype == np.float32
    assert net.forward(x).dtype == np.float32
    loss, grads = net.loss_and_gradients(x, y, sample_weight=np.ones(20))
    assert isinstance(loss, float)
    assert {g.dtype for g in grads.values()} == {np.dtype(np.float32)}
    trainer = Trainer(net, {"epochs": 2, "batch_size": 8, "clip_norm": 1.0, "clip_value": 0.5,
                            "optimizer": {"type": optimizer, "momentum": 0.9}
                            if optimizer == "sgd" else {"type": optimizer}})
    trainer.fit(x, y, sample_weight=np.ones(20))
    _, arrays = trainer.state()
    assert {a.dtype for a in arrays.values()} == {np.dtype(np.float32)}
    assert any(k.startswith("optimizer:") for k in arrays) or optimizer == "sgd"
    assert net.forward(x).dtype == np.float32


def test_float64_on_request():
    for net in (Network.from_spec({**ALL_ACTIVATIONS_SPEC, "dtype": "float64"}),
                Network.from_spec(ALL_ACTIVATIONS_SPEC, dtype="float64")):
        assert {p.dtype for p in net.params().values()} == {np.dtype(np.float64)}
        assert net.forward(np.zeros((2, 3), dtype=np.float32)).dtype == np.float64


def test_one_sgd_step_by_hand():
    """A 2-2-1 network (sigmoid hidden, linear output, MSE), one sample, one step of lr 0.1,
    every number derived with plain arithmetic."""
    spec = {"input_shape": [2], "loss": "mse", "dtype": "float64",
            "layers": [{"type": "dense", "units": 2, "activation": "sigmoid"},
                       {"type": "dense", "units": 1}]}
    net = Network.from_spec(spec)
    w1 = [[0.1, 0.2], [0.3, 0.4]]  # w1[i][j]: input i -> hidden j
    b1 = [0.1, -0.1]
    w2 = [0.5, -0.6]  # hidden j -> output
    b2 = 0.2
    net.set_weights({"dense_0/kernel": np.array(w1), "dense_0/bias": np.array(b1),
                     "dense_1/kernel": np.array([[w2[0]], [w2[1]]]), "dense_1/bias": np.array([b2])})
    x, target, lr = [1.0, 2.0], 1.0, 0.1

    def sig(v):
        return 1 / (1 + math.exp(-v))

    # forward
    h = [sig(x[0] * w1[0][j] + x[1] * w1[1][j] + b1[j]) for j in range(2)]
    assert h[0] == pytest.approx(sig(0.8)) and h[1] == pytest.approx(sig(0.9))
    out = h[0] * w2[0] + h[1] * w2[1] + b2
    loss = (out - target) ** 2
    # backward
    d_out = 2 * (out - target)
    d_w2 = [d_out * h[j] for j in range(2)]
    d_b2 = d_out
    d_z1 = [d_out * w2[j] * h[j] * (1 - h[j]) for j in range(2)]
    d_w1 = [[x[i] * d_z1[j] for j in range(2)] for i in range(2)]
    d_b1 = d_z1

    trainer = Trainer(net, {"epochs": 1, "batch_size": 1, "shuffle": False,
                            "optimizer": {"type": "sgd", "learning_rate": lr}})
    result = trainer.fit(np.array([x]), np.array([target]))
    assert result.history[0]["loss"] == pytest.approx(loss, rel=1e-14)
    w = net.get_weights()
    for i in range(2):
        for j in range(2):
            assert w["dense_0/kernel"][i, j] == pytest.approx(w1[i][j] - lr * d_w1[i][j], rel=1e-14)
    for j in range(2):
        assert w["dense_0/bias"][j] == pytest.approx(b1[j] - lr * d_b1[j], rel=1e-14)
        assert w["dense_1/kernel"][j, 0] == pytest.approx(w2[j] - lr * d_w2[j], rel=1e-14)
    assert w["dense_1/bias"][0] == pytest.approx(b2 - lr * d_b2, rel=1e-14)
    # and the step went downhill
    assert net.loss_and_gradients(np.array([x]), np.array([target]))[0] < loss
