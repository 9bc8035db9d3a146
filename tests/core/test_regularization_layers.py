"""dropout and batch_norm: gradients, train/inference behaviour, the `stochastic` convention
(loss_and_gradients stays deterministic) and spec errors."""

from __future__ import annotations

import numpy as np
import pytest

from core.nn import SpecError, Trainer, train
from core.nn.schema import layer_schemas
from tests.core.gradcheck import check_gradients, make


def randomize_batch_norm(net, seed=5):
    """gamma = 1, beta = 0 at build time would hide mistakes in their gradients."""
    rng = np.random.default_rng(seed)
    for key, w in net.params().items():
        if key.endswith(("/gamma", "/beta")):
            w[...] = rng.uniform(0.5, 1.5, w.shape)


# -- dropout --------------------------------------------------------------------------------

def test_dropout_is_off_in_loss_and_gradients():
    net = make([{"type": "dense", "units": 5, "activation": "tanh"}, {"type": "dropout", "rate": 0.5},
                {"type": "dense", "units": 2}], (3,))
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    check_gradients(net, x, y)
    assert net.loss_and_gradients(x, y)[0] == net.loss_and_gradients(x, y)[0]
    assert net.layers[1].stochastic  # switched back on after the call


def test_dropout_drops_rate_and_scales_in_training_only():
    net = make([{"type": "dropout", "rate": 0.3}], (50, 40))
    layer = net.layers[0]
    layer.rng = np.random.default_rng(7)
    x = np.random.default_rng(0).uniform(1, 2, (10, 50, 40))
    y = layer.forward(x, training=True)
    dropped = np.mean(y == 0)
    assert abs(dropped - 0.3) < 0.01, dropped
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / 0.7)
    dy = np.random.default_rng(1).standard_normal(x.shape)
    np.testing.assert_allclose(layer.backward(dy), np.where(kept, dy / 0.7, 0))
    # the same seed gives the same mask
    layer.rng = np.random.default_rng(7)
    np.testing.assert_array_equal(layer.forward(x, training=True), y)
    # inference is the identity, and so is training with stochastic off
    assert layer.forward(x, training=False) is x
    np.testing.assert_array_equal(net.forward(x), x)
    layer.stochastic = False
    assert layer.forward(x, training=True) is x


def test_dropout_keeps_dtype_and_uses_the_trainers_rng():
    net = make([{"type": "dense", "units": 8}, {"type": "dropout", "rate": 0.5},
                {"type": "dense", "units": 1}], (3,), dtype="float32")
    trainer = Trainer(net, {"epochs": 1, "seed": 3})
    assert net.layers[1].rng is trainer.rng
    x = np.ones((4, 8), np.float32)
    assert net.layers[1].forward(x, training=True).dtype == np.float32


def test_training_with_dropout_is_reproducible():
    def run():
        net = make([{"type": "dense", "units": 8, "activation": "relu"}, {"type": "dropout", "rate": 0.5},
                    {"type": "dense", "units": 1}], (3,))
        rng = np.random.default_rng(0)
        x = rng.standard_normal((40, 3))
        train(net, x, x.sum(axis=1), {"epochs": 3, "batch_size": 8, "seed": 11})
        return net.get_weights()
    a, b = run(), run()
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("rate", [1, 1.5, -0.1])
def test_dropout_rate_errors_name_the_path(rate):
    with pytest.raises(SpecError) as info:
        make([{"type": "dense", "units": 2}, {"type": "dropout", "rate": rate}], (3,))
    assert [e["path"] for e in info.value.errors] == ["model.layers[1].rate"]


def test_schemas_describe_the_new_fields():
    schemas = layer_schemas()
    assert schemas["dropout"]["properties"]["rate"] == {
        "type": "number", "minimum": 0, "exclusiveMaximum": 1, "description": "fraction of inputs to drop, in [0, 1)"}
    assert schemas["batch_norm"]["properties"]["momentum"]["default"] == 0.99
    assert schemas["batch_norm"]["description"].startswith("Batch normalization")


# -- batch norm -------------------------------------------------------------------------------

def test_batch_norm_gradients_after_dense():
    net = make([{"type": "dense", "units": 4, "activation": "tanh"}, {"type": "batch_norm"},
                {"type": "dense", "units": 2, "activation": "tanh"}], (3,))
    randomize_batch_norm(net)
    rng = np.random.default_rng(0)
    check_gradients(net, rng.standard_normal((5, 3)), rng.standard_normal((5, 2)))


@pytest.mark.parametrize("data_format,axis,shape", [
    ("channels_last", -1, (4, 4, 2)),
    ("channels_last", 3, (4, 4, 2)),
    ("channels_first", 1, (2, 4, 4)),
])
def test_batch_norm_gradients_after_conv(data_format, axis, shape):
    # no conv bias: batch norm subtracts it again, so its exact gradient is 0 and the
    # numerical one is pure rounding noise
    net = make([{"type": "conv2d", "filters": 3, "kernel_size": 3, "use_bias": False,
                 "data_format": data_format},
                {"type": "batch_norm", "axis": axis},
                {"type": "activation", "activation": "tanh"},
                {"type": "flatten"}, {"type": "dense", "units": 2}], shape)
    randomize_batch_norm(net)
    assert net.params()["batch_norm_0/gamma"].shape == (3,)
    rng = np.random.default_rng(2)
    check_gradients(net, rng.standard_normal((2, *shape)), rng.standard_normal((2, 2)))


def test_batch_norm_normalizes_and_tracks_moving_statistics():
    net = make([{"type": "batch_norm", "momentum": 0.9}], (3,))
    layer = net.layers[0]
    x = np.random.default_rng(0).normal([1.0, -2.0, 5.0], [1.0, 3.0, 0.5], (200, 3))
    mean, var = x.mean(axis=0), x.var(axis=0)

    # loss_and_gradients normalizes with the batch statistics but leaves the buffers alone
    loss, grads = net.loss_and_gradients(x, np.zeros((200, 3)))
    np.testing.assert_allclose(loss, np.mean(var / (var + 1e-3)))
    assert np.all(grads["batch_norm_0/moving_mean"] == 0)
    np.testing.assert_array_equal(layer.buffers["moving_mean"], 0)
    np.testing.assert_array_equal(layer.buffers["moving_variance"], 1)

    # a real training step (stochastic on) normalizes and moves the statistics
    y = layer.forward(x, training=True)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=0), var / (var + 1e-3))
    np.testing.assert_allclose(layer.buffers["moving_mean"], 0.1 * mean)
    np.testing.assert_allclose(layer.buffers["moving_variance"], 0.9 + 0.1 * var)

    # inference uses the moving statistics
    z = np.array([[1.0, 2.0, 3.0]])
    mm, mv = layer.buffers["moving_mean"], layer.buffers["moving_variance"]
    np.testing.assert_allclose(net.forward(z), (z - mm) / np.sqrt(mv + 1e-3))
    assert set(net.get_weights()) == {"batch_norm_0/gamma", "batch_norm_0/beta",
                                      "batch_norm_0/moving_mean", "batch_norm_0/moving_variance"}


def test_batch_norm_keeps_dtype():
    net = make([{"type": "conv2d", "filters": 2, "kernel_size": 1}, {"type": "batch_norm"},
                {"type": "flatten"}, {"type": "dense", "units": 1}], (3, 3, 2), dtype="float32")
    x = np.random.default_rng(0).standard_normal((4, 3, 3, 2)).astype(np.float32)
    loss, grads = net.loss_and_gradients(x, np.zeros(4))
    assert all(g.dtype == np.float32 for g in grads.values())
    train(net, x, np.zeros(4), {"epochs": 1})
    assert all(v.dtype == np.float32 for v in net.get_weights().values())
    assert net.forward(x).dtype == np.float32


def test_batch_norm_axis_errors():
    with pytest.raises(SpecError) as info:
        make([{"type": "batch_norm", "axis": 0}], (3,))
    assert [e["path"] for e in info.value.errors] == ["model.layers[0].axis"]
    with pytest.raises(SpecError) as info:
        make([{"type": "dense", "units": 2}, {"type": "batch_norm", "axis": 2}], (3,))
    assert info.value.errors[0]["path"] == "model.layers[1]"
    assert "batch_norm_0" in info.value.errors[0]["message"]
