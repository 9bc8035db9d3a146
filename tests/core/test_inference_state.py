"""Inference keeps nothing of a batch on the layers (so one network can serve several requests
at once), and an inference network holds no gradients and refuses to be trained."""

from __future__ import annotations

import numpy as np
import pytest

from core.nn import Network, Trainer
from core.nn.network import walk

IMAGES = {"input_shape": [8, 8, 2], "loss": "categorical_crossentropy", "layers": [
    {"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same", "activation": "relu"},
    {"type": "max_pool2d"},
    {"type": "batch_norm"},
    {"type": "conv2d", "filters": 3, "kernel_size": 2, "data_format": "channels_last"},
    {"type": "avg_pool2d", "pool_size": 1},
    {"type": "dropout", "rate": 0.5},
    {"type": "flatten"},
    {"type": "dense", "units": 6, "activation": "tanh"},
    {"type": "residual", "layers": [{"type": "dense", "units": 6, "activation": "relu"}]},
    {"type": "activation", "activation": "elu"},
    {"type": "dense", "units": 3, "activation": "softmax"}]}
SEQUENCES = {"input_shape": [5, 3], "loss": "categorical_crossentropy", "layers": [
    {"type": "lstm", "units": 4, "return_sequences": True},
    {"type": "gru", "units": 4, "return_sequences": True},
    {"type": "simple_rnn", "units": 4},
    {"type": "dense", "units": 3, "activation": "softmax"}]}


def kept_arrays(net: Network) -> dict[tuple[str, str], int]:
    """Every array a layer holds as an attribute, by layer and name, with its identity."""
    return {(layer.name, k): id(v) for layer in walk(net.layers)
            for k, v in vars(layer).items() if isinstance(v, np.ndarray)}


@pytest.mark.parametrize("spec", [IMAGES, SEQUENCES], ids=["images", "sequences"])
def test_inference_leaves_nothing_on_the_layers(spec):
    net = Network.from_spec(spec, seed=0)
    x = np.random.default_rng(0).normal(size=(16, *spec["input_shape"]))
    before = kept_arrays(net)
    net.forward(x)
    assert kept_arrays(net) == before
    net.logits(x, training=True)  # training keeps what backward needs: the check can see it
    assert len(kept_arrays(net)) > len(before)


def test_an_inference_network_predicts_alike_holds_no_gradients_and_refuses_training():
    trainable = Network.from_spec(IMAGES, seed=0)
    served = Network.from_spec(IMAGES, seed=0, inference=True)
    served.set_weights(trainable.get_weights())
    x = np.random.default_rng(1).normal(size=(10, 8, 8, 2))
    np.testing.assert_array_equal(served.forward(x), trainable.forward(x))
    assert served.flat_grads is None
    assert not any(g.flags.writeable for g in served.gradients().values())
    with pytest.raises(ValueError, match="inference"):
        Trainer(served, {"epochs": 1})


@pytest.mark.parametrize("spec", [IMAGES, SEQUENCES], ids=["images", "sequences"])
def test_a_network_built_from_weights_runs_no_initialiser_and_predicts_alike(spec, monkeypatch):
    """The predict endpoint's cache built each model with its initialisers (an orthogonal 4096 x
    4096 float64 kernel took seconds on a web thread), then replaced every value."""
    from core.nn import initializers

    trained = Network.from_spec(spec, seed=3)
    trained.set_weights({k: v + 0.25 for k, v in trained.get_weights().items()})  # not what any seed draws

    def refuse(*_args):
        raise AssertionError("an initialiser ran")

    monkeypatch.setattr(initializers, "INITIALIZERS", dict.fromkeys(initializers.INITIALIZERS, refuse))
    monkeypatch.setattr("core.nn.layers.base.INITIALIZERS", initializers.INITIALIZERS)
    served = Network.from_weights(spec, trained.get_weights(), inference=True)
    x = np.random.default_rng(1).normal(size=(10, *spec["input_shape"]))
    np.testing.assert_array_equal(served.forward(x), trained.forward(x))
    with pytest.raises(ValueError, match="missing"):  # every weight is needed: none is left as zeros
        Network.from_weights(spec, dict(list(trained.get_weights().items())[1:]))
