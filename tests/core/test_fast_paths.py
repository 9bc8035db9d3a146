"""The engine's speed-ups keep the math: training backward without the input gradient, the flat
weight and gradient vectors, both im2col layouts, batched evaluation, the shared constants.
(No timing here: `make bench` measures speed.)"""

from __future__ import annotations

import numpy as np
import pytest

from core.nn import Network, Trainer
from core.nn.constants import column_sums, ones, zeros
from tests.core.gradcheck import make

NETS = {
    "dense": ([{"type": "dense", "units": 5, "activation": "relu"},
               {"type": "dense", "units": 3, "activation": "softmax"}], (4,)),
    "flatten_first": ([{"type": "flatten"}, {"type": "dense", "units": 5, "activation": "tanh"},
                       {"type": "dense", "units": 3, "activation": "softmax"}], (2, 3)),
    "conv_gray": ([{"type": "conv2d", "filters": 4, "kernel_size": 3, "activation": "relu"},
                   {"type": "max_pool2d", "pool_size": 2}, {"type": "flatten"},
                   {"type": "dense", "units": 3, "activation": "softmax"}], (7, 7, 1)),
    "conv_wide": ([{"type": "conv2d", "filters": 3, "kernel_size": [3, 2], "strides": 2, "padding": "same"},
                   {"type": "flatten"}, {"type": "dense", "units": 3, "activation": "softmax"}], (6, 5, 5)),
    "lstm": ([{"type": "lstm", "units": 4}, {"type": "dense", "units": 3, "activation": "softmax"}], (5, 2)),
}


@pytest.mark.parametrize("name", sorted(NETS))
def test_training_backward_gives_the_same_weight_gradients_without_the_input_gradient(name):
    layers, shape = NETS[name]
    net = make(layers, shape, loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, *shape))
    y = rng.integers(0, 3, 6)
    z = net.logits(x, training=True)
    _, dz, _ = net.loss(net.output_activation, z, y)
    dx = net.backward(dz, input_gradient=True)
    assert dx.shape == x.shape
    full = {k: g.copy() for k, g in net.gradients().items()}
    net.flat_grads[:] = np.nan  # everything training needs must be written again
    assert net.backward(dz) is None
    for k, g in net.gradients().items():
        np.testing.assert_array_equal(g, full[k], err_msg=k)


def test_weights_and_gradients_are_views_of_the_flat_vectors():
    net = make(*NETS["conv_gray"], loss="categorical_crossentropy")
    params, grads = net.params(), net.gradients()
    assert net.flat_params.size == sum(p.size for p in params.values()) == net.parameter_count
    for k, p in params.items():
        assert np.shares_memory(p, net.flat_params) and p.flags.c_contiguous, k
        assert np.shares_memory(grads[k], net.flat_grads), k
    net.set_weights({k: np.full(p.shape, 0.5) for k, p in params.items()})
    assert np.all(net.flat_params == 0.5)
    # each top-level layer with weights is one block, in order
    assert list(net.layer_slices) == ["conv2d_0", "dense_0"]
    assert net.layer_slices["conv2d_0"].stop == net.layer_slices["dense_0"].start


def test_frozen_layer_in_the_middle_splits_the_trainable_runs():
    layers = [{"type": "dense", "units": 4, "activation": "relu", "name": "a"},
              {"type": "dense", "units": 4, "activation": "relu", "name": "b"},
              {"type": "dense", "units": 3, "activation": "softmax", "name": "c"}]
    net = Network.from_spec({"input_shape": [3], "layers": layers, "loss": "categorical_crossentropy"})
    assert list(net.trainable_runs()) == ["a..c"]
    net.freeze(["b"])
    assert list(net.trainable_runs()) == ["a", "c"]
    before = net.get_weights()
    rng = np.random.default_rng(0)
    result = Trainer(net, {"epochs": 3, "optimizer": {"type": "adam"}, "batch_size": 8}).fit(
        rng.standard_normal((40, 3)), rng.integers(0, 3, 40))
    after = net.get_weights()
    for k in before:
        assert np.array_equal(before[k], after[k]) == k.startswith("b/"), k
    assert set(result.history[-1]["grad_norms"]) == {"a", "c"}


def test_a_layer_named_like_a_run_does_not_take_the_runs_place():
    """Runs are keyed "FIRST..LAST": a single layer named "a..b" had the same key as the run of
    layers a and b, which replaced it and silently stopped training them."""
    layers = [{"type": "dense", "units": 4, "activation": "relu", "name": "a"},
              {"type": "dense", "units": 4, "activation": "relu", "name": "b"},
              {"type": "dense", "units": 4, "activation": "relu", "name": "f"},
              {"type": "dense", "units": 3, "activation": "softmax", "name": "a..b"}]
    net = Network.from_spec({"input_shape": [3], "layers": layers, "loss": "categorical_crossentropy"})
    net.freeze(["f"])
    assert len(net.trainable_runs()) == 2
    before = net.get_weights()
    rng = np.random.default_rng(0)
    Trainer(net, {"epochs": 2, "optimizer": {"type": "adam"}, "batch_size": 8}).fit(
        rng.standard_normal((40, 3)), rng.integers(0, 3, 40))
    after = net.get_weights()
    for k in before:
        assert np.array_equal(before[k], after[k]) == k.startswith("f/"), k


def conv_by_loops(x, kernel, stride, pad):
    """Cross-correlation by direct loops over output pixels (channels_last), no bias."""
    (sh, sw), (ph, pw) = stride, pad
    xp = np.pad(x, ((0, 0), ph, pw, (0, 0)))
    kh, kw, _, f = kernel.shape
    oh, ow = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    out = np.zeros((len(x), oh, ow, f))
    for r in range(oh):
        for c in range(ow):
            patch = xp[:, r * sh:r * sh + kh, c * sw:c * sw + kw, :]
            out[:, r, c, :] = np.tensordot(patch, kernel, axes=([1, 2, 3], [0, 1, 2]))
    return out


@pytest.mark.parametrize("channels", [1, 2, 3, 4, 6])  # < 4: im2col built column by column
@pytest.mark.parametrize("strides,padding", [(1, "valid"), (2, "same"), ([1, 2], "same")])
@pytest.mark.parametrize("use_bias", [True, False])  # the bias rides in the GEMM: a ones column
def test_both_im2col_layouts_compute_the_convolution(channels, strides, padding, use_bias):
    net = make([{"type": "conv2d", "filters": 3, "kernel_size": [3, 2], "strides": strides,
                 "padding": padding, "use_bias": use_bias}], (6, 5, channels))
    layer = net.layers[0]
    rng = np.random.default_rng(channels)
    x = rng.standard_normal((2, 6, 5, channels))
    want = conv_by_loops(x, layer.params["kernel"], layer.strides, (layer.pad_h, layer.pad_w))
    if use_bias:
        layer.params["bias"][...] = rng.standard_normal(3)
        want += layer.params["bias"]
    np.testing.assert_allclose(net.forward(x), want, rtol=1e-12, atol=1e-12)


def test_evaluate_in_batches_matches_one_pass():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((50, 4)), rng.integers(0, 3, 50)
    net = make(*NETS["dense"], loss="categorical_crossentropy")
    small = Trainer(net, {"batch_size": 7}).evaluate(x, y)
    whole = Trainer(net, {"batch_size": 1000}).evaluate(x, y)
    assert small.keys() == whole.keys() == {"loss", "accuracy"}
    assert small["accuracy"] == whole["accuracy"]
    assert small["loss"] == pytest.approx(whole["loss"], rel=1e-12)
    reg = Network.from_spec({"input_shape": [4], "layers": [{"type": "dense", "units": 2}], "loss": "mse"},
                            dtype="float64")
    yr = rng.standard_normal((50, 2))
    a, b = Trainer(reg, {"batch_size": 7}).evaluate(x, yr), Trainer(reg, {"batch_size": 1000}).evaluate(x, yr)
    for k in ("loss", "mae", "r2"):
        assert a[k] == pytest.approx(b[k], rel=1e-12), k


def test_shared_constants_are_read_only_and_right():
    z = zeros((3, 4), np.float32)
    assert z.dtype == np.float32 and not z.any() and not z.flags.writeable
    with pytest.raises(ValueError):
        z[0, 0] = 1
    big = zeros((1000, 7), np.float64)  # grows the cache; earlier views stay valid
    assert big.shape == (1000, 7) and not big.any() and not z.any()
    assert np.all(ones(5, np.float32) == 1)
    a = np.random.default_rng(0).standard_normal((33, 5))
    out = np.empty(5)
    np.testing.assert_allclose(column_sums(a, out=out), a.sum(axis=0), rtol=1e-12)
