"""The normalization layer: statistics of the training split, taken when training starts and
kept with the weights, so that predict takes raw features."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_wine
from sklearn.preprocessing import StandardScaler

from core.nn import Network, SpecError, Trainer
from tests.core.gradcheck import input_gradient_check


def wine_net(dtype="float64", **norm) -> Network:
    spec = {"input_shape": [13], "loss": "categorical_crossentropy", "dtype": dtype,
            "layers": [{"type": "normalization", **norm}, {"type": "dense", "units": 16, "activation": "relu"},
                       {"type": "dense", "units": 3, "activation": "softmax"}]}
    return Network.from_spec(spec, seed=0)


def test_it_learns_scikit_learns_standard_scaling_from_the_training_split_only():
    x, y = load_wine(return_X_y=True)
    net = wine_net()
    trainer = Trainer(net, {"epochs": 1, "batch_size": 32, "validation_split": 0.25, "seed": 0})
    trainer.fit(x, y)
    norm = net.layers[0]
    # the samples it trained on: the validation split's complement, found the trainer's way
    from core.nn.training import validation_split
    train_rows, _ = validation_split(net.loss.prepare_targets(y, net.output_shape, net.dtype), trainer.cfg, True)
    scaler = StandardScaler().fit(x[train_rows])
    np.testing.assert_allclose(norm.buffers["mean"], scaler.mean_, rtol=1e-12)
    np.testing.assert_allclose(norm.buffers["variance"], scaler.var_, rtol=1e-12)
    np.testing.assert_allclose(norm.forward(x, training=False), scaler.transform(x), rtol=1e-10, atol=1e-12)


def test_raw_features_train_as_well_as_scaled_ones_and_predict_from_the_weights():
    """Wine's features span 0.1 to 1,600: unscaled, this MLP stays near chance in 30 epochs."""
    x, y = load_wine(return_X_y=True)
    accuracy = {}
    for norm in (True, False):
        spec = {"input_shape": [13], "loss": "categorical_crossentropy",
                "layers": [{"type": "dense", "units": 16, "activation": "relu"},
                           {"type": "dense", "units": 3, "activation": "softmax"}]}
        if norm:
            spec["layers"].insert(0, {"type": "normalization"})
        net = Network.from_spec(spec, seed=0)
        Trainer(net, {"epochs": 30, "batch_size": 16, "seed": 0}).fit(x, y)
        accuracy[norm] = float(np.mean(net.forward(x).argmax(axis=1) == y))
        if norm:  # the statistics travel with the weights: a network built from them predicts the same
            again = Network.from_weights(spec, net.get_weights(), inference=True)
            np.testing.assert_array_equal(again.forward(x), net.forward(x))
    assert accuracy[True] > 0.95 and accuracy[False] < 0.8, accuracy


def test_fine_tuning_and_resuming_keep_the_statistics():
    x, y = load_wine(return_X_y=True)
    parent = wine_net()
    Trainer(parent, {"epochs": 2, "batch_size": 32, "seed": 0}).fit(x, y)
    child = wine_net()
    child.set_weights(parent.get_weights())
    Trainer(child, {"epochs": 2, "batch_size": 32, "seed": 0}).fit(x[:40] * 3, y[:40])  # other data
    for name in ("mean", "variance"):
        np.testing.assert_array_equal(child.layers[0].buffers[name], parent.layers[0].buffers[name])


def test_gradients_through_it_and_a_constant_feature():
    rng = np.random.default_rng(0)
    x = rng.normal(3, 1, (12, 13)) * np.linspace(0.5, 5, 13)
    x[:, 4] = 7.0  # no variance: centred only, its scale taken as 1
    y = np.arange(12) % 3
    net = wine_net()
    net.adapt(x)
    assert net.layers[0].buffers["variance"][4] == 0
    assert np.all(net.layers[0].forward(x, training=False)[:, 4] == 0)
    assert input_gradient_check(net, x, y) < 1e-6


def test_per_channel_statistics_of_images_and_float32():
    rng = np.random.default_rng(0)
    x = rng.normal(5, 3, (20, 6, 6, 2)) * np.array([1, 100])  # channels_last, two very different channels
    spec = {"input_shape": [6, 6, 2], "loss": "mse",
            "layers": [{"type": "normalization"}, {"type": "flatten"}, {"type": "dense", "units": 1}]}
    net = Network.from_spec(spec, seed=0)
    net.adapt(x)
    out = net.layers[0].forward(net.as_input(x), training=False)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 1, 2)), 1, rtol=1e-4)


def test_it_must_come_first_and_have_seen_data():
    with pytest.raises(SpecError) as err:
        Network.from_spec({"input_shape": [4], "loss": "mse",
                           "layers": [{"type": "dense", "units": 4}, {"type": "normalization"}]})
    assert err.value.errors[0]["path"] == "model.layers[1]" and "first layer" in err.value.errors[0]["message"]
    with pytest.raises(SpecError):
        Network.from_spec({"input_shape": [4], "loss": "mse", "layers": [{"type": "normalization", "axis": 0}]})
    net = wine_net()
    with pytest.raises(ValueError, match="has not seen data yet"):
        net.forward(np.zeros((1, 13)))


def test_statistics_that_do_not_fit_the_dtype_or_are_not_finite_fail_clearly():
    """A feature of 1e20s in float32: its variance was stored as inf, its scale 0, and the feature
    silently dropped (the weights' JSON then held Infinity). NaN inputs said the layer "has not
    seen data yet"."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 13))
    x[:, 1] *= 1e20
    y = np.arange(60) % 3
    with pytest.raises(ValueError, match="variance of feature 1 .* overflows float32"):
        Trainer(wine_net("float32"), {"epochs": 1, "seed": 0}).fit(x, y)
    Trainer(wine_net("float64"), {"epochs": 1, "seed": 0}).fit(x, y)  # float64 holds it
    x[5, 2] = np.nan
    with pytest.raises(ValueError, match="not a finite number"):
        wine_net().adapt(x)
