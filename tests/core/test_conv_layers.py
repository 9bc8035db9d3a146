"""conv2d, max_pool2d, avg_pool2d and flatten: gradients against central differences, forward
values against direct loops, spec errors with paths, and learning on scikit-learn's digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.nn import LAYERS, Network, SpecError, train
from core.nn.layers.conv import Conv2D, Pool2D
from core.nn.schema import layer_schemas
from tests.core.gradcheck import assert_gradients_match, check_gradients, make
from tests.data import digits_split


def distinct(shape, seed=0):
    """Values that are all at least 1/size apart, so no max-pool window is near a tie."""
    n = int(np.prod(shape))
    return (np.random.default_rng(seed).permutation(n).reshape(shape) / n * 4 - 2).astype(np.float64)


def conv_reference(x, kernel, bias, stride, pad):
    """Direct loops over output pixels (channels_last), the definition of cross-correlation."""
    (sh, sw), (ph, pw) = stride, pad
    xp = np.pad(x, ((0, 0), ph, pw, (0, 0)))
    kh, kw, _, f = kernel.shape
    oh = (xp.shape[1] - kh) // sh + 1
    ow = (xp.shape[2] - kw) // sw + 1
    out = np.zeros((len(x), oh, ow, f))
    for r in range(oh):
        for c in range(ow):
            patch = xp[:, r * sh:r * sh + kh, c * sw:c * sw + kw, :]
            out[:, r, c, :] = np.tensordot(patch, kernel, axes=([1, 2, 3], [0, 1, 2])) + bias
    return out


# -- forward values ---------------------------------------------------------------------------

@pytest.mark.parametrize("padding,strides,pads,out_hw", [
    ("valid", 1, ((0, 0), (0, 0)), (5, 5)),
    ("valid", 2, ((0, 0), (0, 0)), (3, 3)),
    # TensorFlow's rule: total = (out - 1) * stride + kernel - size, (total // 2) before
    ("same", 1, ((1, 1), (0, 1)), (7, 6)),
    ("same", 2, ((1, 1), (0, 0)), (4, 3)),
    ("same", [2, 3], ((1, 1), (0, 0)), (4, 2)),
    ("same", [3, 4], ((1, 1), (0, 0)), (3, 2)),
])
def test_conv_forward_matches_direct_loops(padding, strides, pads, out_hw):
    net = make([{"type": "conv2d", "filters": 4, "kernel_size": [3, 2], "strides": strides,
                 "padding": padding, "bias_initializer": "glorot_uniform"}], (7, 6, 3))
    layer = net.layers[0]
    assert layer.output_shape == (*out_hw, 4)
    x = np.random.default_rng(0).standard_normal((2, 7, 6, 3))
    s = (strides, strides) if isinstance(strides, int) else tuple(strides)
    want = conv_reference(x, layer.params["kernel"], layer.params["bias"], s, pads)
    np.testing.assert_allclose(net.forward(x), want, rtol=1e-12, atol=1e-12)


def test_channels_first_is_channels_last_transposed():
    common = {"type": "conv2d", "filters": 3, "kernel_size": 3, "strides": 2, "padding": "same"}
    last = make([common, {"type": "max_pool2d", "pool_size": 2, "strides": 1},
                 {"type": "avg_pool2d", "pool_size": 2, "padding": "same"}], (6, 5, 2))
    first = make([{**common, "data_format": "channels_first"},
                  {"type": "max_pool2d", "pool_size": 2, "strides": 1, "data_format": "channels_first"},
                  {"type": "avg_pool2d", "pool_size": 2, "padding": "same", "data_format": "channels_first"}],
                 (2, 6, 5))
    first.set_weights(last.get_weights())
    x = np.random.default_rng(0).standard_normal((3, 6, 5, 2))
    assert first.output_shape == (3, 1, 1) and last.output_shape == (1, 1, 3)
    np.testing.assert_allclose(first.forward(x.transpose(0, 3, 1, 2)),
                               last.forward(x).transpose(0, 3, 1, 2), rtol=1e-12)


def test_pools_forward_values():
    x = np.arange(2 * 5 * 5 * 1, dtype=np.float64).reshape(2, 5, 5, 1) % 7
    mx = make([{"type": "max_pool2d", "pool_size": 2}], (5, 5, 1))
    assert mx.output_shape == (2, 2, 1)
    np.testing.assert_array_equal(mx.forward(x)[0, :, :, 0], [[6, 3], [4, 6]])
    # same padding averages over real pixels only: the last window of a row holds one pixel
    av = make([{"type": "avg_pool2d", "pool_size": 2, "padding": "same"}], (5, 5, 1))
    assert av.output_shape == (3, 3, 1)
    out = av.forward(x)[0, :, :, 0]
    np.testing.assert_allclose(out[0, 0], np.mean(x[0, 0:2, 0:2, 0]))
    np.testing.assert_allclose(out[0, 2], np.mean(x[0, 0:2, 4, 0]))
    np.testing.assert_allclose(out[2, 2], x[0, 4, 4, 0])


@pytest.mark.parametrize("window,strides,shape", [(2, 2, (5, 5)), (3, 2, (5, 4)), ([4, 3], 1, (6, 7)),
                                                  (9, 2, (4, 3)), (40, 7, (16, 5))])
def test_avg_pool_same_divides_each_window_by_its_real_pixels(window, strides, shape):
    """The counts come per axis (a window larger than the image included, whose padding could
    otherwise take minutes to build a ones image for): each output is the plain mean of the
    pixels its window covers."""
    net = make([{"type": "avg_pool2d", "pool_size": window, "strides": strides, "padding": "same"}], (*shape, 2))
    layer = net.layers[0]
    x = distinct((1, *shape, 2))
    out = net.forward(x)
    (kh, kw), (sh, sw), (top, _), (left, _) = layer.window, layer.strides, layer.pad_h, layer.pad_w
    for i in range(layer.out_h):
        for j in range(layer.out_w):
            rows = slice(max(i * sh - top, 0), i * sh - top + kh)
            cols = slice(max(j * sw - left, 0), j * sw - left + kw)
            np.testing.assert_allclose(out[0, i, j], x[0, rows, cols].mean(axis=(0, 1)), rtol=1e-12)


def test_a_huge_padded_pool_window_builds_without_padding_an_image():
    """Validation builds the network inside the submit request: a 1000 x 1000 window over an
    8 x 8 image must not allocate (nor loop over) a padded 1007 x 1007 image to count pixels."""
    import tracemalloc

    tracemalloc.start()
    try:
        net = make([{"type": "avg_pool2d", "pool_size": 1000, "padding": "same"}], (8, 8, 1))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert net.output_shape == (1, 1, 1) and peak < 1 << 20
    np.testing.assert_allclose(net.forward(distinct((1, 8, 8, 1))), distinct((1, 8, 8, 1)).mean())


def test_conv_forward_of_no_rows_has_the_output_shape():
    net = make([{"type": "conv2d", "filters": 3, "kernel_size": 2}, {"type": "max_pool2d"}], (5, 5, 1))
    assert net.forward(np.empty((0, 5, 5, 1))).shape == (0, 2, 2, 3)
    alone = make([{"type": "conv2d", "filters": 3, "kernel_size": 2}], (5, 5, 1))
    assert alone.forward(np.empty((0, 5, 5, 1))).shape == (0, 4, 4, 3)
    to_dense = make([{"type": "conv2d", "filters": 3, "kernel_size": 2}, {"type": "flatten"},
                     {"type": "dense", "units": 2}], (5, 5, 1))
    assert to_dense.forward(np.empty((0, 5, 5, 1))).shape == (0, 2)


def test_max_pool_gradient_goes_to_one_winner_on_ties():
    net = make([{"type": "max_pool2d", "pool_size": 2}], (4, 4, 2))
    layer = net.layers[0]
    layer.forward(np.ones((1, 4, 4, 2)), training=True)
    dx = layer.backward(np.full((1, 2, 2, 2), 3.0))
    assert dx.sum() == 3.0 * 8
    assert np.count_nonzero(dx) == 8  # one winner per window and channel


def pool_reference(x, dy, kind, window, strides, pads):
    """Direct loops over windows: (output, dL/dx). max: the first maximum in row-major order
    takes the gradient, padding never wins; avg: the mean over the window's real pixels."""
    (kh, kw), (sh, sw), (ph, pw) = window, strides, pads
    real = np.pad(np.ones(x.shape[1:3], bool), (ph, pw))
    xp = np.pad(x, ((0, 0), ph, pw, (0, 0)), constant_values=-np.inf if kind == "max" else 0.0)
    out, dxp = np.zeros(dy.shape), np.zeros_like(xp)
    for r in range(dy.shape[1]):
        for q in range(dy.shape[2]):
            rows, cols = slice(r * sh, r * sh + kh), slice(q * sw, q * sw + kw)
            win, mask = xp[:, rows, cols], real[rows, cols]
            for s in range(len(x)):
                for ch in range(x.shape[-1]):
                    if kind == "max":
                        i, j = np.unravel_index(np.argmax(win[s, :, :, ch]), mask.shape)
                        out[s, r, q, ch] = win[s, i, j, ch]
                        dxp[s, r * sh + i, q * sw + j, ch] += dy[s, r, q, ch]
                    else:
                        out[s, r, q, ch] = win[s, :, :, ch][mask].mean()
                        dxp[s, rows, cols, ch] += mask * dy[s, r, q, ch] / mask.sum()
    return out, dxp[:, ph[0]:ph[0] + x.shape[1], pw[0]:pw[0] + x.shape[2]]


@pytest.mark.parametrize("pool,shape,pads", [
    ({"pool_size": 2}, (6, 6, 3), ((0, 0), (0, 0))),  # windows tile the image
    ({"pool_size": 2}, (5, 7, 2), ((0, 0), (0, 0))),  # a row and a column left over
    ({"pool_size": 2, "strides": 3}, (8, 8, 2), ((0, 0), (0, 0))),  # gaps between windows
    ({"pool_size": 2, "padding": "same"}, (5, 5, 2), ((0, 1), (0, 1))),  # padding inside windows
    ({"pool_size": [3, 2]}, (6, 4, 4), ((0, 0), (0, 0))),
    ({"pool_size": 3, "strides": 2}, (7, 7, 2), ((0, 0), (0, 0))),  # overlapping
])
def test_max_pool_backward_matches_direct_loops_with_ties(pool, shape, pads):
    """Non-overlapping windows take a contiguous path, overlapping ones a strided one;
    both must send each window's gradient to the same single pixel as a direct loop, ties
    included."""
    net = make([{"type": "max_pool2d", **pool}], shape)
    layer = net.layers[0]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, (4, *shape)).astype(np.float64)  # three values: ties everywhere
    x[0] = 1.0  # a constant image: every window ties
    out = layer.forward(x, training=True)
    dy = rng.standard_normal(out.shape)
    _, want = pool_reference(x, dy, "max", layer.window, layer.strides, pads)
    np.testing.assert_array_equal(layer.backward(dy), want)
    np.testing.assert_array_equal(out, layer.forward(x, training=False))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(kind=st.sampled_from(["max", "avg"]), window=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       strides=st.tuples(st.integers(1, 3), st.integers(1, 3)), padding=st.sampled_from(["valid", "same"]),
       size=st.tuples(st.integers(3, 7), st.integers(3, 7)), channels=st.integers(1, 5),
       seed=st.integers(0, 2**16))
def test_pools_match_direct_loops_for_any_geometry(kind, window, strides, padding, size, channels, seed):
    """Forward and backward of both pools, on either path (a stack for windows that do not
    overlap, strided slices otherwise), against direct loops; three input values, so ties are
    everywhere."""
    spec = {"type": f"{kind}_pool2d", "pool_size": list(window), "strides": list(strides), "padding": padding}
    layer = make([spec], (*size, channels)).layers[0]
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, (2, *size, channels)).astype(np.float64)
    out = layer.forward(x, training=True)
    dy = rng.standard_normal(out.shape)
    want_out, want_dx = pool_reference(x, dy, kind, layer.window, layer.strides, (layer.pad_h, layer.pad_w))
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.backward(dy), want_dx, rtol=1e-12, atol=1e-12)


def run_layer_by_layer(net: Network) -> Network:
    """The same network without Network._hand_convs_to_pools: each conv returns its image and
    each pool gathers its own windows."""
    for layer in net.layers:
        if isinstance(layer, Conv2D):
            layer.pool_tile = None
        if isinstance(layer, Pool2D):
            layer.takes_stack = False
    return net


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("pool_type", ["max_pool2d", "avg_pool2d"])
def test_a_conv_handing_its_output_to_a_pool_changes_no_value(data_format, dtype, pool_type):
    """The conv emits the pool's stack and the pool returns the conv's dz: the outputs are
    bit-identical to running the layers one by one, ties included, and every gradient (weights,
    dL/dx) agrees. Odd sizes leave rows and columns that no pool window reads; the first conv
    has 1 input channel and the second 4 (im2col's two layouts), and the second conv needs
    dL/dx of its input."""
    shape = [11, 9, 1] if data_format == "channels_last" else [1, 11, 9]
    spec = {"input_shape": shape, "loss": "categorical_crossentropy", "dtype": dtype, "layers": [
        {"type": "conv2d", "filters": 4, "kernel_size": 3, "activation": "relu", "data_format": data_format},
        {"type": pool_type, "pool_size": 2, "data_format": data_format},  # 9x7 -> 4x3
        {"type": "conv2d", "filters": 5, "kernel_size": 2, "activation": "tanh", "data_format": data_format},
        {"type": pool_type, "pool_size": [2, 1], "data_format": data_format},  # 3x2 -> 1x2
        {"type": "flatten"}, {"type": "dense", "units": 3, "activation": "softmax"}]}
    fused = Network.from_spec(spec, seed=3)
    plain = run_layer_by_layer(Network.from_spec(spec, seed=3))
    assert fused.layers[0].pool_tile == (2, 2) and fused.layers[2].pool_tile == (2, 1)
    assert fused.layers[1].takes_stack and fused.layers[3].takes_stack
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.0, size=(6, *shape)).round(1)  # rounding makes equal pixels
    x[:2] = 0.5  # constant images: every window ties
    y = rng.integers(0, 3, 6)
    np.testing.assert_array_equal(fused.forward(x), plain.forward(x))
    tol = {"float32": 1e-5, "float64": 1e-12}[dtype]
    loss_fused, grads_fused = fused.loss_and_gradients(x, y)
    loss_plain, grads_plain = plain.loss_and_gradients(x, y)
    np.testing.assert_allclose(loss_fused, loss_plain, rtol=tol)
    for name, g in grads_plain.items():
        np.testing.assert_allclose(grads_fused[name], g, rtol=tol, atol=tol, err_msg=name)
    assert all(np.any(g) for g in grads_plain.values())
    dx = {}
    for name, net in (("fused", fused), ("plain", plain)):
        z = net.logits(net.as_input(x), training=True)
        _, dz, _ = net.loss(net.output_activation, z, y)
        dx[name] = net.backward(dz, input_gradient=True)
    np.testing.assert_allclose(dx["fused"], dx["plain"], rtol=tol, atol=tol)


@pytest.mark.parametrize("pool_type", ["max_pool2d", "avg_pool2d"])
def test_only_a_pool_with_stride_equal_to_window_and_no_padding_takes_the_convs_output(pool_type):
    conv = {"type": "conv2d", "filters": 2, "kernel_size": 3}
    for pool in ({"pool_size": 2, "strides": 1}, {"pool_size": 2, "padding": "same"},
                 {"pool_size": 2, "strides": 3}):
        net = make([conv, {"type": pool_type, **pool}], (9, 9, 1))
        assert net.layers[0].pool_tile is None and not net.layers[1].takes_stack, pool
    net = make([conv, {"type": pool_type, "pool_size": [3, 2]}], (9, 9, 1))
    assert net.layers[0].pool_tile == (3, 2) and net.layers[1].takes_stack


def test_dtype_is_kept_end_to_end():
    for dtype in (np.float32, np.float64):
        net = make([{"type": "conv2d", "filters": 2, "kernel_size": 3, "activation": "relu"},
                    {"type": "max_pool2d"}, {"type": "avg_pool2d", "pool_size": 1}, {"type": "flatten"},
                    {"type": "dense", "units": 3, "activation": "softmax"}], (6, 6, 1),
                   loss="categorical_crossentropy", dtype=np.dtype(dtype).name)
        x = np.random.default_rng(0).standard_normal((4, 6, 6, 1))
        loss, grads = net.loss_and_gradients(x, [0, 1, 2, 0])
        assert all(g.dtype == dtype for g in grads.values())
        assert net.forward(x).dtype == dtype
        h = x.astype(dtype)
        for layer in net.layers:
            h = layer.forward(h, training=True)
            assert h.dtype == dtype, layer.name
        g = np.ones_like(h)
        for layer in reversed(net.layers):
            g = layer.backward(g)
            assert g.dtype == dtype, layer.name


# -- gradients ----------------------------------------------------------------------------

@pytest.mark.parametrize("conv,shape", [
    ({"padding": "valid"}, (5, 4, 2)),
    ({"padding": "same"}, (5, 4, 2)),
    ({"padding": "valid", "strides": 2}, (6, 5, 2)),
    ({"padding": "same", "strides": [2, 1]}, (5, 4, 2)),
    ({"padding": "same", "strides": 2, "data_format": "channels_first"}, (2, 5, 4)),
    ({"padding": "valid", "data_format": "channels_first", "l2": 0.01, "l1": 0.01}, (2, 5, 4)),
    ({"padding": "same"}, (5, 4, 5)),  # 4 channels or more: im2col built row by row
    ({"padding": "valid", "use_bias": False}, (5, 4, 5)),
    ({"padding": "valid", "use_bias": False}, (5, 4, 2)),
])
def test_conv_gradients(conv, shape):
    net = make([{"type": "conv2d", "filters": 3, "kernel_size": [3, 2], "activation": "tanh",
                 "bias_initializer": "glorot_uniform", **conv}], shape)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *shape))
    y = rng.standard_normal((2, *net.output_shape))
    # a step of 1e-5: with five channels, 1e-6 leaves a rounding error of 2e-6 in dL/dx
    check_gradients(net, x, y, eps=1e-5)


@pytest.mark.parametrize("channels", [1, 5])  # both im2col layouts
def test_gradients_through_a_conv_that_hands_its_output_to_a_pool(channels):
    """conv (strided, odd output) -> max-pool that takes the conv's stack -> conv -> max-pool:
    the weight gradients. (dL/dx is compared with the layer-by-layer run above; through two
    conv-pool stages many of its entries are tiny, and central differences on them are noise.)"""
    net = make([{"type": "conv2d", "filters": 4, "kernel_size": 3, "strides": [1, 2], "activation": "tanh",
                 "bias_initializer": "glorot_uniform"},
                {"type": "max_pool2d", "pool_size": 2},
                {"type": "conv2d", "filters": 3, "kernel_size": 2, "activation": "relu",
                 "bias_initializer": "glorot_uniform"},
                {"type": "max_pool2d", "pool_size": [1, 2]},
                {"type": "flatten"}, {"type": "dense", "units": 2}], (9, 15, channels))
    assert net.layers[0].pool_tile == (2, 2) and net.layers[2].pool_tile == (1, 2)
    x = distinct((2, 9, 15, channels))
    y = np.random.default_rng(1).standard_normal((2, 2))
    assert_gradients_match(net, x, y, eps=1e-5, tol=1e-6)


@pytest.mark.parametrize("pool,shape", [
    ({"type": "max_pool2d"}, (4, 4, 2)),
    ({"type": "max_pool2d", "pool_size": 3, "strides": 2, "padding": "same"}, (5, 4, 2)),
    ({"type": "max_pool2d", "pool_size": [2, 3], "strides": 1, "data_format": "channels_first"}, (2, 4, 4)),
    ({"type": "avg_pool2d"}, (4, 4, 2)),
    ({"type": "avg_pool2d", "pool_size": 3, "strides": 2, "padding": "same"}, (5, 4, 2)),
    ({"type": "avg_pool2d", "pool_size": [2, 3], "strides": 1, "data_format": "channels_first"}, (2, 4, 4)),
])
def test_pool_gradients(pool, shape):
    # a pool has no weights: check dL/dx through it, then a dense layer after it
    net = make([pool, {"type": "flatten"}, {"type": "dense", "units": 2}], shape)
    x = distinct((2, *shape))
    y = np.random.default_rng(1).standard_normal((2, 2))
    check_gradients(net, x, y)


def test_flatten_gradients():
    net = make([{"type": "flatten"}, {"type": "dense", "units": 3, "activation": "tanh"}], (2, 3, 2))
    assert net.layers[0].output_shape == (12,)
    rng = np.random.default_rng(0)
    check_gradients(net, rng.standard_normal((3, 2, 3, 2)), rng.standard_normal((3, 3)))


def test_conv_pool_flatten_dense_stack_gradients():
    net = make([
        {"type": "conv2d", "filters": 3, "kernel_size": 3, "padding": "same", "activation": "tanh"},
        {"type": "max_pool2d", "pool_size": 2},
        {"type": "conv2d", "filters": 2, "kernel_size": 2, "strides": 1, "activation": "relu"},
        {"type": "avg_pool2d", "pool_size": 2, "padding": "same"},
        {"type": "flatten"},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ], (6, 6, 2), loss="categorical_crossentropy", seed=0)
    # One sample: dL/dx shrinks as 1/batch while the loss's rounding noise does not, and behind
    # max-pool and ReLU some pixels already have gradients near 1e-6.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 6, 6, 2))
    check_gradients(net, x, rng.integers(0, 3, 1))


# -- specs --------------------------------------------------------------------------------

def spec_errors(layers, input_shape=(8, 8, 1)):
    with pytest.raises(SpecError) as info:
        make(layers, input_shape)
    return info.value.errors


def test_spec_errors_name_paths():
    errors = spec_errors([{"type": "conv2d", "filters": 2, "kernel_size": 3, "padding": "full"}])
    assert [e["path"] for e in errors] == ["model.layers[0].padding"]
    errors = spec_errors([{"type": "flatten"},
                          {"type": "max_pool2d", "pool_size": [2, 0], "data_format": "nhwc"}])
    assert {e["path"] for e in errors} == {"model.layers[1].pool_size", "model.layers[1].data_format"}
    errors = spec_errors([{"type": "conv2d", "filters": 0, "kernel_size": True, "kernels": 3}])
    assert {e["path"] for e in errors} == {"model.layers[0].filters", "model.layers[0].kernel_size",
                                           "model.layers[0].kernels"}


def test_a_softmax_output_over_channels_first_is_refused():
    """The output layer's softmax runs over the last axis, which for channels_first is the width,
    whereas the same conv as a hidden layer normalizes over the channels: refused, not computed."""
    conv = {"type": "conv2d", "filters": 3, "kernel_size": 1, "activation": "softmax",
            "data_format": "channels_first"}
    with pytest.raises(SpecError) as exc:
        Network.from_spec({"input_shape": [2, 4, 5], "loss": "categorical_crossentropy", "layers": [conv]})
    assert exc.value.errors[0]["path"] == "model.layers[0].data_format"
    hidden = Network.from_spec({"input_shape": [2, 4, 5], "loss": "mse",
                                "layers": [conv, {"type": "activation", "activation": "linear"}]})
    out = hidden.forward(np.random.default_rng(0).standard_normal((2, 2, 4, 5)))
    np.testing.assert_allclose(out.sum(axis=1), 1, rtol=1e-6)  # hidden: a softmax over the channels
    relu = {**conv, "activation": "relu"}  # element-wise output activations do not care
    Network.from_spec({"input_shape": [2, 4, 5], "loss": "mse", "layers": [relu]})


def test_shape_errors_name_the_layer():
    errors = spec_errors([{"type": "conv2d", "filters": 2, "kernel_size": 3},
                          {"type": "conv2d", "filters": 2, "kernel_size": 7, "name": "big"}])
    assert errors[0]["path"] == "model.layers[1]"
    assert "'big'" in errors[0]["message"] and "padding 'same'" in errors[0]["message"]
    errors = spec_errors([{"type": "flatten"}, {"type": "max_pool2d"}])
    assert errors[0]["path"] == "model.layers[1]" and "max_pool2d_0" in errors[0]["message"]


def test_pair_fields_accept_int_or_pair_and_publish_a_schema():
    net = make([{"type": "conv2d", "filters": 2, "kernel_size": [3, 1], "strides": [1, 2]}], (5, 5, 1))
    assert net.output_shape == (3, 3, 2)
    assert net.layers[0].params["kernel"].shape == (3, 1, 1, 2)
    schema = layer_schemas()["conv2d"]
    assert schema["required"] == ["type", "filters", "kernel_size"]
    assert {"type": "integer", "minimum": 1} in schema["properties"]["kernel_size"]["anyOf"]
    assert schema["properties"]["kernel_size"]["description"]
    for name in ("conv2d", "max_pool2d", "avg_pool2d", "flatten"):
        assert name in LAYERS
    json.dumps(layer_schemas())  # the API publishes it as is


# -- learning ----------------------------------------------------------------------------

@pytest.mark.slow
def test_small_conv_net_learns_digits():
    x_tr, x_te, y_tr, y_te = digits_split()
    net = Network.from_spec({"input_shape": [8, 8, 1], "loss": "sparse_categorical_crossentropy", "layers": [
        {"type": "conv2d", "filters": 16, "kernel_size": 3, "padding": "same", "activation": "relu"},
        {"type": "max_pool2d", "pool_size": 2},
        {"type": "conv2d", "filters": 32, "kernel_size": 3, "padding": "same", "activation": "relu"},
        {"type": "max_pool2d", "pool_size": 2},
        {"type": "flatten"},
        {"type": "dropout", "rate": 0.2},
        {"type": "dense", "units": 10, "activation": "softmax"},
    ]}, seed=0)
    train(net, x_tr, y_tr, {"epochs": 15, "batch_size": 32, "seed": 0,
                            "optimizer": {"type": "adam", "learning_rate": 0.003}})
    accuracy = float((net.predict(x_te).argmax(axis=1) == y_te).mean())
    assert accuracy >= 0.97, accuracy


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_relu_after_pooling_gives_bit_identical_outputs_and_gradients(data_format, dtype):
    """The network runs conv -> relu -> max-pool as relu(max-pool(conv)). Inputs where many
    windows are all negative (relu ties at zero) and some pixels repeat (ties before relu) must
    give exactly what the layers in their written order give."""
    shape = [6, 6, 2] if data_format == "channels_last" else [2, 6, 6]
    spec = {"input_shape": shape, "loss": "categorical_crossentropy", "dtype": dtype, "layers": [
        {"type": "conv2d", "filters": 3, "kernel_size": 3, "padding": "same", "activation": "relu",
         "data_format": data_format},
        {"type": "max_pool2d", "pool_size": 2, "data_format": data_format},
        {"type": "conv2d", "filters": 4, "kernel_size": 2, "activation": "relu", "data_format": data_format},
        {"type": "max_pool2d", "pool_size": 2, "strides": 1, "data_format": data_format},  # overlapping
        {"type": "flatten"}, {"type": "dense", "units": 3, "activation": "softmax"}]}
    fast, written = Network.from_spec(spec, seed=3), Network.from_spec(spec, seed=3)
    assert fast.layers[1].activation is not None and fast.layers[0].activation_name == "linear"
    for conv, pool in ((written.layers[0], written.layers[1]), (written.layers[2], written.layers[3])):
        pool.activation = None
        conv.set_activation("relu")
    rng = np.random.default_rng(0)
    x = rng.normal(-0.5, 1.0, size=(8, *shape)).round(1)  # rounding makes equal pixels
    x[:2] = -1.0  # constant images: every window ties
    y = rng.integers(0, 3, 8)
    np.testing.assert_array_equal(fast.forward(x), written.forward(x))
    loss_fast, grads_fast = fast.loss_and_gradients(x, y)
    loss_written, grads_written = written.loss_and_gradients(x, y)
    assert loss_fast == loss_written
    for name, g in grads_written.items():
        np.testing.assert_array_equal(grads_fast[name], g, err_msg=name)
    assert any(np.any(g) for g in grads_written.values())


def test_only_relu_moves_behind_a_max_pool():
    """tanh saturates: two different pixels can tie after it, so it stays before the pool; and
    an average pool does not commute with relu."""
    def layers(activation, pool):
        return [{"type": "conv2d", "filters": 2, "kernel_size": 3, "activation": activation},
                {"type": pool}, {"type": "flatten"}, {"type": "dense", "units": 2, "activation": "softmax"}]
    for activation, pool in (("tanh", "max_pool2d"), ("relu", "avg_pool2d")):
        net = Network.from_spec({"input_shape": [6, 6, 1], "loss": "categorical_crossentropy",
                                 "layers": layers(activation, pool)})
        assert net.layers[0].activation_name == activation
        assert getattr(net.layers[1], "activation", None) is None
