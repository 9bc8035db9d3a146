"""Backprop is checked against float64 central differences: every activation in a hidden layer,
every loss (with and without sample weights), L1/L2 penalties, and random dense stacks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.nn import Network
from core.nn.activations import ACTIVATIONS

from .gradcheck import assert_gradients_match, input_gradient_check

ACTIVATION_NAMES = ["linear", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "softplus",
                    "softmax"]


def dense(units, activation="linear", **kw):
    return {"type": "dense", "units": units, "activation": activation, **kw}


def build(layers, loss, n_in=4, seed=1):
    spec = {"input_shape": [n_in], "layers": layers, "loss": loss, "dtype": "float64"}
    return Network.from_spec(spec, seed=seed)


def data(n=10, n_in=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng, rng.normal(size=(n, n_in))


def test_every_activation_is_covered():
    assert sorted(ACTIVATION_NAMES) == sorted(ACTIVATIONS)


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_hidden_activation_gradients(activation):
    rng, x = data()
    y = rng.integers(0, 3, size=len(x))
    # random normal inputs keep relu/leaky_relu pre-activations away from the kink at 0
    net = build([dense(5, activation), dense(3, "softmax")], "categorical_crossentropy")
    assert_gradients_match(net, x, y, eps=1e-5)
    assert input_gradient_check(net, x[:3], y[:3], eps=1e-5) <= 1e-6


REGRESSION_LOSSES = ["mse", "mae", "huber"]


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("loss", REGRESSION_LOSSES)
def test_regression_loss_gradients(loss, weighted):
    rng, x = data()
    # targets spread over +-3 so huber sees residuals on both sides of delta=1
    y = rng.normal(scale=2.0, size=(len(x), 2))
    w = rng.uniform(0.1, 3.0, size=len(x)) if weighted else None
    net = build([dense(6, "tanh"), dense(2)], loss)
    residual = np.abs(net.forward(x) - y)
    if loss == "huber":
        assert (residual < 1).any() and (residual > 1).any()
    assert_gradients_match(net, x, y, sample_weight=w, eps=1e-5)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_mse_through_a_sigmoid_output(weighted):
    """A non-fused output activation: the loss applies it and backpropagates through it."""
    rng, x = data()
    y = rng.uniform(size=(len(x), 1))
    w = rng.uniform(0.1, 3.0, size=len(x)) if weighted else None
    net = build([dense(5, "elu"), dense(1, "sigmoid")], "mse")
    assert_gradients_match(net, x, y, sample_weight=w, eps=1e-5)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("outputs", [1, 3])
def test_binary_crossentropy_gradients(outputs, weighted):
    rng, x = data()
    y = rng.integers(0, 2, size=(len(x), outputs)).astype(float)
    if outputs == 1:
        y = y[:, 0]  # a flat vector of 0/1 labels is accepted for a single output
    w = rng.uniform(0.1, 3.0, size=len(x)) if weighted else None
    net = build([dense(5, "tanh"), dense(outputs, "sigmoid")], "binary_crossentropy")
    assert_gradients_match(net, x, y, sample_weight=w, eps=1e-5)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("labels", ["integer", "one_hot", "soft", "soft_rounded"])
def test_categorical_crossentropy_gradients(labels, weighted):
    """soft_rounded: rows that sum to 1 only within the 1e-3 accepted (0.333 three times) are
    taken as summing to 1, so that the fused gradient p - y is the loss's gradient."""
    rng, x = data()
    k = 4
    idx = rng.integers(0, k, size=len(x))
    y = {"integer": idx,
         "one_hot": np.eye(k)[idx],
         "soft": rng.dirichlet(np.ones(k), size=len(x)),
         "soft_rounded": rng.dirichlet(np.ones(k), size=len(x)) * (1 + 8e-4)}[labels]
    w = rng.uniform(0.1, 3.0, size=len(x)) if weighted else None
    net = build([dense(5, "tanh"), dense(k, "softmax")], "categorical_crossentropy")
    assert_gradients_match(net, x, y, sample_weight=w, eps=1e-5)


def test_integer_and_one_hot_labels_agree():
    rng, x = data()
    idx = rng.integers(0, 3, size=len(x))
    w = rng.uniform(0.1, 3.0, size=len(x))
    net = build([dense(5, "tanh"), dense(3, "softmax")], "sparse_categorical_crossentropy")
    for weights in (None, w):
        li, gi = net.loss_and_gradients(x, idx, weights)
        lo, go = net.loss_and_gradients(x, np.eye(3)[idx], weights)
        assert li == pytest.approx(lo, rel=1e-12)
        for key in gi:
            np.testing.assert_allclose(gi[key], go[key], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("rows", [[[-3, 4], [0, 1]], [[0.3, 0.9], [0, 1]], [[0, 0], [1, 0]], [[1, 0], [2, -1]]],
                         ids=["negative", "sum over 1", "sum 0", "second row"])
def test_categorical_targets_must_be_probability_rows(rows):
    """A negative "probability" makes the cross-entropy unbounded below: such a job trained
    until it diverged. Rows outside [0, 1], or that do not sum to 1, are refused up front."""
    net = build([dense(2, "softmax")], "categorical_crossentropy")
    with pytest.raises(ValueError, match="in \\[0, 1\\] that sum to 1; sample"):
        net.loss.prepare_targets(np.array(rows), net.output_shape, net.dtype)
    soft = np.array([[0.25, 0.75], [1.0, 0.0]])
    np.testing.assert_array_equal(net.loss.prepare_targets(soft, net.output_shape, net.dtype), soft)


@pytest.mark.parametrize("penalty", [{"l2": 0.05}, {"l1": 0.03}, {"l1": 0.02, "l2": 0.04}],
                         ids=["l2", "l1", "l1+l2"])
def test_dense_penalty_gradients(penalty):
    rng, x = data()
    y = rng.normal(size=(len(x), 1))
    net = build([dense(5, "tanh", **penalty), dense(1, **penalty)], "mse")
    assert_gradients_match(net, x, y, eps=1e-5)


def test_penalties_apply_to_kernels_only():
    """loss = data loss + l1*sum|W| + l2*sum(W^2) per kernel; biases are not penalised."""
    rng, x = data()
    y = rng.normal(size=(len(x), 1))
    plain = build([dense(5, "tanh", bias_initializer="ones"), dense(1)], "mse")
    penal = build([dense(5, "tanh", bias_initializer="ones", l1=0.1, l2=0.2), dense(1)], "mse")
    penal.set_weights(plain.get_weights())
    l0, g0 = plain.loss_and_gradients(x, y)
    l1, g1 = penal.loss_and_gradients(x, y)
    w = plain.params()["dense_0/kernel"]
    assert l1 == pytest.approx(l0 + 0.1 * np.abs(w).sum() + 0.2 * (w**2).sum(), rel=1e-12)
    np.testing.assert_allclose(g1["dense_0/kernel"] - g0["dense_0/kernel"],
                               0.1 * np.sign(w) + 0.4 * w, rtol=1e-10, atol=1e-12)
    for key in ("dense_0/bias", "dense_1/kernel", "dense_1/bias"):
        np.testing.assert_array_equal(g1[key], g0[key])


def test_sample_weights_are_a_weighted_mean():
    """Integer weights act like repeating samples; scaling all weights changes nothing."""
    rng, x = data(n=6)
    y = rng.integers(0, 3, size=6)
    net = build([dense(4, "tanh"), dense(3, "softmax")], "categorical_crossentropy")
    w = np.array([1, 2, 1, 3, 1, 1])
    lw, gw = net.loss_and_gradients(x, y, w)
    lr_, gr = net.loss_and_gradients(np.repeat(x, w, axis=0), np.repeat(y, w))
    ls, gs = net.loss_and_gradients(x, y, 7.5 * w)
    assert lw == pytest.approx(lr_, rel=1e-12) and lw == pytest.approx(ls, rel=1e-12)
    assert net.loss_and_gradients(x, y, w.tolist())[0] == lw  # any array-like will do
    for key in gw:
        np.testing.assert_allclose(gw[key], gr[key], rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(gw[key], gs[key], rtol=1e-10, atol=1e-14)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(widths=st.lists(st.integers(1, 5), min_size=1, max_size=3),
       activations=st.lists(st.sampled_from(ACTIVATION_NAMES), min_size=3, max_size=3),
       n_in=st.integers(1, 4), n=st.integers(1, 6), loss=st.sampled_from(["mse", "huber", "cce"]),
       seed=st.integers(0, 2**16))
def test_random_dense_stacks(widths, activations, n_in, n, loss, seed):
    """Any stack of dense layers backpropagates correctly, whatever its shapes. Derandomized:
    the relative-error metric is dominated by round-off for entries near 1e-7 (a leaky_relu
    slope times a small activation), which a free search eventually finds."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_in))
    # random biases: with zero biases a dead relu upstream puts the next relu exactly on its kink
    layers = [dense(w, a, bias_initializer="glorot_normal")
              for w, a in zip(widths, activations, strict=False)]
    if loss == "cce":
        layers.append(dense(3, "softmax"))
        y, loss = rng.integers(0, 3, size=n), "categorical_crossentropy"
    else:
        layers.append(dense(2))
        y = rng.normal(size=(n, 2))
    net = build(layers, loss, n_in=n_in, seed=seed)
    assert_gradients_match(net, x, y, eps=1e-5)
