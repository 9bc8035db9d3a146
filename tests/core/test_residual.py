"""residual blocks: gradients, weight names, nested specs with error paths, shape checks."""

from __future__ import annotations

import numpy as np
import pytest

from core.nn import Network, SpecError, Trainer, train
from tests.core.gradcheck import check_gradients, make
from tests.data import digits_split


def dense_block(**extra):
    return {"type": "residual", "layers": [{"type": "dense", "units": 6, "activation": "tanh"},
                                           {"type": "dense", "units": 4}], **extra}


def test_dense_residual_gradients_and_names():
    net = make([{"type": "dense", "units": 4, "activation": "tanh"}, dense_block(activation="tanh"),
                dense_block(), {"type": "dense", "units": 2}], (3,))
    assert "residual_0/dense_0/kernel" in net.params()
    assert "residual_1/dense_1/bias" in net.params()
    assert net.summary()[1]["params"] == (4 * 6 + 6) + (6 * 4 + 4)
    assert net.parameter_count == sum(layer["params"] for layer in net.summary())
    rng = np.random.default_rng(0)
    check_gradients(net, rng.standard_normal((3, 3)), rng.standard_normal((3, 2)))


def test_residual_output_is_input_plus_block():
    net = make([dense_block()], (4,))
    x = np.random.default_rng(0).standard_normal((2, 4))
    inner = net.layers[0].sublayers()
    np.testing.assert_allclose(net.forward(x), x + inner[1].forward(inner[0].forward(x, False), False))


def test_conv_residual_with_batch_norm_and_dropout_gradients():
    block = {"type": "residual", "activation": "tanh", "layers": [
        {"type": "conv2d", "filters": 2, "kernel_size": 3, "padding": "same", "use_bias": False},
        {"type": "batch_norm"},
        {"type": "activation", "activation": "tanh"},
        {"type": "dropout", "rate": 0.5},
        {"type": "conv2d", "filters": 2, "kernel_size": 3, "padding": "same", "l2": 0.01},
    ]}
    net = make([block, {"type": "flatten"}, {"type": "dense", "units": 2}], (4, 4, 2))
    rng = np.random.default_rng(0)
    net.params()["residual_0/batch_norm_0/gamma"][...] = rng.uniform(0.5, 1.5, 2)
    assert "residual_0/batch_norm_0/moving_mean" in net.buffers()
    check_gradients(net, rng.standard_normal((2, 4, 4, 2)), rng.standard_normal((2, 2)))
    # inner stochastic layers take part in the network's conventions
    trainer = Trainer(net, {"epochs": 1})
    assert net.layers[0].sublayers()[3].rng is trainer.rng


def test_nested_residual_and_spec_round_trip():
    spec = {"input_shape": [4], "loss": "mse", "layers": [
        {"type": "residual", "layers": [{"type": "batch_norm"}, dense_block()]},
        {"type": "dense", "units": 1},
    ]}
    net = Network.from_spec(spec, seed=0, dtype="float64")
    assert "residual_0/residual_0/dense_1/kernel" in net.params()
    assert "residual_0/batch_norm_0/moving_variance" in net.buffers()
    again = Network.from_spec(net.spec, seed=0, dtype="float64")  # the checked spec re-checks
    again.set_weights(net.get_weights())
    x = np.random.default_rng(0).standard_normal((5, 4))
    np.testing.assert_array_equal(again.forward(x), net.forward(x))
    check_gradients(net, x, x.sum(axis=1))


def errors_of(layers, input_shape=(4,)):
    with pytest.raises(SpecError) as info:
        make(layers, input_shape)
    return info.value.errors


def test_inner_spec_errors_name_nested_paths():
    errors = errors_of([{"type": "dense", "units": 4},
                        {"type": "residual", "layers": [{"type": "dense", "units": 0},
                                                        {"type": "conv2d", "filters": 2, "kernel_size": 3,
                                                         "padding": "full"},
                                                        {"type": "nope"}]}])
    assert {e["path"] for e in errors} == {"model.layers[1].layers[0].units",
                                           "model.layers[1].layers[1].padding",
                                           "model.layers[1].layers[2].type"}
    errors = errors_of([{"type": "residual", "layers": [
        {"type": "residual", "layers": [{"type": "dropout", "rate": 2}]}]}])
    assert [e["path"] for e in errors] == ["model.layers[0].layers[0].layers[0].rate"]
    assert [e["path"] for e in errors_of([{"type": "residual", "layers": []}])] == ["model.layers[0].layers"]


def test_shape_mismatch_names_the_block():
    errors = errors_of([{"type": "dense", "units": 4},
                        {"type": "residual", "name": "skip", "layers": [{"type": "dense", "units": 3}]}])
    assert errors[0]["path"] == "model.layers[1]"
    assert "'skip'" in errors[0]["message"] and "(3,)" in errors[0]["message"]
    # a shape error inside the block names the inner layer
    errors = errors_of([{"type": "residual", "layers": [{"type": "dense", "units": 4},
                                                        {"type": "max_pool2d"}]}])
    assert errors[0]["path"] == "model.layers[0].layers[1]"
    assert "max_pool2d_0" in errors[0]["message"]


@pytest.mark.slow
def test_conv_net_with_batch_norm_and_residual_learns_digits():
    x_tr, x_te, y_tr, y_te = digits_split()
    net = Network.from_spec({"input_shape": [8, 8, 1], "loss": "sparse_categorical_crossentropy", "layers": [
        {"type": "conv2d", "filters": 16, "kernel_size": 3, "padding": "same", "use_bias": False},
        {"type": "batch_norm"},
        {"type": "activation", "activation": "relu"},
        {"type": "max_pool2d"},
        {"type": "residual", "activation": "relu", "layers": [
            {"type": "conv2d", "filters": 16, "kernel_size": 3, "padding": "same", "activation": "relu"},
            {"type": "conv2d", "filters": 16, "kernel_size": 3, "padding": "same"}]},
        {"type": "max_pool2d"},
        {"type": "flatten"},
        {"type": "dropout", "rate": 0.2},
        {"type": "dense", "units": 10, "activation": "softmax"},
    ]}, seed=0)
    train(net, x_tr, y_tr, {"epochs": 15, "batch_size": 32, "seed": 0,
                            "optimizer": {"type": "adam", "learning_rate": 0.003}})
    # inference runs on the moving statistics, so this also checks that they were tracked
    accuracy = float((net.predict(x_te).argmax(axis=1) == y_te).mean())
    assert accuracy >= 0.97, accuracy
