"""Recurrent layers (simple_rnn, lstm, gru): float64 central-difference gradient checks of BPTT,
the documented equations against a naive per-step reference, spec validation, dtypes, numerical
stability, determinism, and two sequence tasks learned with held-out evaluation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from core.nn import Network, SpecError, train
from core.nn.activations import _sigmoid
from core.nn.layers import LAYERS
from core.nn.schema import layer_schemas

from .gradcheck import assert_gradients_match, input_gradient_check

KINDS = ["simple_rnn", "lstm", "gru"]
GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3}
STEPS, FEATURES, UNITS = 4, 3, 3


def rnn(kind, units=UNITS, **kw):
    return {"type": kind, "units": units, **kw}


def build(layers, loss="mse", input_shape=(STEPS, FEATURES), dtype="float64", seed=1):
    spec = {"input_shape": list(input_shape), "layers": layers, "loss": loss, "dtype": dtype}
    return Network.from_spec(spec, seed=seed)


def jitter(net, seed=2, scale=0.3):
    """Random biases and perturbed kernels, so that every gate and both bias rows matter."""
    rng = np.random.default_rng(seed)
    for v in net.params().values():
        v += rng.normal(0, scale, v.shape)  # in place: params are live arrays
    return net


def seq_data(n=4, steps=STEPS, features=FEATURES, seed=0):
    rng = np.random.default_rng(seed)
    return rng, rng.normal(size=(n, steps, features))


def check_gradients(net, x, y):
    assert_gradients_match(net, x, y, eps=1e-5, tol=1e-6)
    err = input_gradient_check(net, x, y, eps=1e-5)
    assert err <= 1e-6, f"dL/dx: relative error {err:.2e}"


# -- gradient checks ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_last_step_gradients(kind):
    rng, x = seq_data()
    net = jitter(build([rnn(kind), {"type": "dense", "units": 2}]))
    assert net.output_shape == (2,)
    check_gradients(net, x, rng.normal(size=(len(x), 2)))


@pytest.mark.parametrize("kind", KINDS)
def test_sequence_gradients_with_dense_per_step(kind):
    """return_sequences=true, a dense layer applied at every step, mse over (n, steps, out)."""
    rng, x = seq_data()
    net = jitter(build([rnn(kind, return_sequences=True), {"type": "dense", "units": 2}]))
    assert net.output_shape == (STEPS, 2)
    check_gradients(net, x, rng.normal(size=(len(x), STEPS, 2)))


@pytest.mark.parametrize("first,second", [("lstm", "gru"), ("gru", "simple_rnn"),
                                          ("simple_rnn", "lstm")])
def test_stacked_gradients(first, second):
    rng, x = seq_data()
    net = jitter(build([rnn(first, return_sequences=True), rnn(second, units=2),
                        {"type": "dense", "units": 2}]))
    check_gradients(net, x, rng.normal(size=(len(x), 2)))


def test_per_step_classification_gradients():
    """Sequence labelling: softmax per step with class-index targets of shape (n, steps)."""
    rng, x = seq_data()
    net = jitter(build([rnn("gru", return_sequences=True),
                        {"type": "dense", "units": 3, "activation": "softmax"}],
                       loss="sparse_categorical_crossentropy"))
    check_gradients(net, x, rng.integers(0, 3, size=(len(x), STEPS)))


@pytest.mark.parametrize("kind,options", [
    ("simple_rnn", {"activation": "elu"}),
    ("lstm", {"activation": "elu"}),  # the generic (non sigmoid/tanh) path
    ("lstm", {"recurrent_activation": "softplus", "activation": "tanh"}),
    ("gru", {"recurrent_activation": "tanh", "activation": "gelu"}),
    ("lstm", {"use_bias": False}),
    ("gru", {"use_bias": False}),
    ("lstm", {"l1": 0.01, "l2": 0.02}),
    ("gru", {"l2": 0.05}),
])
def test_gradients_with_options(kind, options):
    rng, x = seq_data()
    net = jitter(build([rnn(kind, **options), {"type": "dense", "units": 2}]))
    if "l2" in options:
        assert net.layers[0].regularized == ("kernel", "recurrent_kernel")
    check_gradients(net, x, rng.normal(size=(len(x), 2)))


def test_recurrent_layer_can_be_the_output():
    rng, x = seq_data()
    net = jitter(build([rnn("lstm", units=2, return_sequences=True)]))
    check_gradients(net, x, rng.normal(size=(len(x), STEPS, 2)))


# -- the forward pass matches the documented equations --------------------------------------------

def reference_forward(kind, params, x, units):
    """A naive per-sample, per-step implementation written from the docstrings."""
    W, U = params["kernel"], params["recurrent_kernel"]
    b = params.get("bias")
    u = units
    sig = _sigmoid
    outs = []
    for sample in x:
        h, c, hs = np.zeros(u), np.zeros(u), []
        for xt in sample:
            if kind == "simple_rnn":
                h = np.tanh(xt @ W + h @ U + b)
            elif kind == "lstm":
                z = xt @ W + h @ U + b
                i, f, g, o = sig(z[:u]), sig(z[u:2 * u]), np.tanh(z[2 * u:3 * u]), sig(z[3 * u:])
                c = f * c + i * g
                h = o * np.tanh(c)
            else:
                xi, hh = xt @ W + b[0], h @ U + b[1]
                r = sig(xi[:u] + hh[:u])
                z = sig(xi[u:2 * u] + hh[u:2 * u])
                n = np.tanh(xi[2 * u:] + r * hh[2 * u:])
                h = (1 - z) * n + z * h
            hs.append(h)
        outs.append(hs)
    return np.array(outs)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_matches_reference(kind):
    _, x = seq_data(n=3, steps=5)
    net = jitter(build([rnn(kind, units=4, return_sequences=True)], input_shape=(5, FEATURES)))
    layer = net.layers[0]
    expected = reference_forward(kind, layer.params, x, 4)
    np.testing.assert_allclose(net.forward(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_last_step_equals_last_of_sequence(kind):
    _, x = seq_data(n=5, steps=6)
    seq = build([rnn(kind, return_sequences=True)], input_shape=(6, FEATURES), seed=3)
    last = build([rnn(kind)], input_shape=(6, FEATURES), seed=3)
    np.testing.assert_array_equal(seq.forward(x)[:, -1], last.forward(x))


# -- weights, spec and schema ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_weight_names_and_shapes(kind):
    net = build([rnn(kind, units=5, return_sequences=True), rnn(kind, units=2)], input_shape=(7, 3))
    g = GATES[kind]
    bias0 = (2, 3 * 5) if kind == "gru" else (g * 5,)
    shapes = {k: v.shape for k, v in net.params().items()}
    assert shapes[f"{kind}_0/kernel"] == (3, g * 5)
    assert shapes[f"{kind}_0/recurrent_kernel"] == (5, g * 5)
    assert shapes[f"{kind}_0/bias"] == bias0
    assert shapes[f"{kind}_1/kernel"] == (5, g * 2)
    assert net.output_shape == (2,)
    assert all(v.flags.c_contiguous for v in net.params().values())


def test_recurrent_kernel_is_orthogonal_and_forget_bias_is_one():
    net = build([rnn("lstm", units=6)], input_shape=(3, 2), dtype="float64")
    U = net.params()["lstm_0/recurrent_kernel"]  # (6, 24): orthonormal rows
    np.testing.assert_allclose(U @ U.T, np.eye(6), atol=1e-12)
    bias = net.params()["lstm_0/bias"]
    np.testing.assert_array_equal(bias[6:12], 1)
    np.testing.assert_array_equal(np.delete(bias, np.s_[6:12]), 0)
    off = build([rnn("lstm", units=6, unit_forget_bias=False)], input_shape=(3, 2))
    np.testing.assert_array_equal(off.params()["lstm_0/bias"], 0)


def test_units_must_be_positive():
    with pytest.raises(SpecError) as info:
        build([rnn("lstm", units=0)])
    assert [e["path"] for e in info.value.errors] == ["model.layers[0].units"]


@pytest.mark.parametrize("input_shape", [(8,), (2, 3, 4)])
def test_input_must_be_steps_by_features(input_shape):
    with pytest.raises(SpecError) as info:
        build([{"type": "dense", "units": 3}, rnn("gru")], input_shape=input_shape)
    (error,) = info.value.errors
    assert error["path"] == "model.layers[1]"
    assert "gru_0" in error["message"] and "(steps, features)" in error["message"]


def test_stacking_without_return_sequences_is_explained():
    with pytest.raises(SpecError, match="return_sequences: true") as info:
        build([rnn("lstm"), rnn("lstm")])
    assert info.value.errors[0]["path"] == "model.layers[1]"


def test_field_errors_name_their_paths():
    with pytest.raises(SpecError) as info:
        build([rnn("lstm", recurrent_activation="softmax", return_sequences="yes"),
               rnn("gru", unit_forget_bias=True)])
    assert sorted(e["path"] for e in info.value.errors) == [
        "model.layers[0].recurrent_activation", "model.layers[0].return_sequences",
        "model.layers[1].unit_forget_bias"]


def test_registered_with_json_schema():
    assert {"simple_rnn", "lstm", "gru"} <= set(LAYERS)
    schemas = layer_schemas()
    lstm = schemas["lstm"]["properties"]
    assert lstm["recurrent_initializer"]["default"] == "orthogonal"
    assert lstm["unit_forget_bias"]["default"] is True
    assert "softmax" not in lstm["recurrent_activation"]["enum"]
    assert "recurrent_activation" not in schemas["simple_rnn"]["properties"]
    assert schemas["gru"]["required"] == ["type", "units"]


# -- dtype, stability, determinism -----------------------------------------------------------------

@pytest.mark.parametrize("options", [{}, {"activation": "elu", "recurrent_activation": "tanh"}])
@pytest.mark.parametrize("kind", KINDS)
def test_float32_end_to_end(kind, options):
    if kind == "simple_rnn":
        options = {k: v for k, v in options.items() if k != "recurrent_activation"}
    net = build([rnn(kind, units=4, return_sequences=True, **options),
                 rnn(kind, units=3, **options), {"type": "dense", "units": 1}],
                input_shape=(5, 2), dtype="float32")
    x = np.random.default_rng(0).normal(size=(6, 5, 2)).astype(np.float32)
    out = x
    for layer in net.layers:
        out = layer.forward(out, training=True)
        assert out.dtype == np.float32, layer.name
    d = np.ones_like(out)
    for layer in reversed(net.layers):
        d = layer.backward(d)
        assert d.dtype == np.float32, layer.name
    assert d.shape == x.shape
    assert all(g.dtype == np.float32 for g in net.gradients().values())
    assert all(p.dtype == np.float32 for p in net.params().values())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind,options", [
    ("simple_rnn", {}), ("simple_rnn", {"activation": "elu"}),
    ("lstm", {}), ("lstm", {"activation": "elu"}), ("lstm", {"recurrent_activation": "tanh"}),
    ("gru", {}), ("gru", {"activation": "elu"}), ("gru", {"recurrent_activation": "tanh"}),
])
def test_huge_inputs_stay_finite_without_warnings(kind, options, dtype):
    net = build([rnn(kind, units=4, **options), {"type": "dense", "units": 1}],
                input_shape=(6, 3), dtype=dtype)
    x = np.random.default_rng(0).choice([-1000.0, 1000.0], size=(5, 6, 3))
    y = np.zeros((5, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, grads = net.loss_and_gradients(x, y)
    assert np.isfinite(loss)
    assert all(np.isfinite(g).all() for g in grads.values())


def _short_training(seed):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6, 2))
    y = rng.normal(size=(40, 1))
    net = build([rnn("lstm", units=4, return_sequences=True), rnn("gru", units=3),
                 {"type": "dense", "units": 1}], input_shape=(6, 2), dtype="float32", seed=seed)
    train(net, x, y, {"epochs": 2, "batch_size": 8, "seed": seed,
                      "optimizer": {"type": "adam", "learning_rate": 0.01}})
    return net.get_weights()


@pytest.mark.parametrize("kind", KINDS)
def test_inference_keeps_nothing_of_the_batch(kind):
    """Only training keeps the states backward needs: a served model holds its weights, not
    the last request's sequences."""
    _, x = seq_data(n=64, steps=STEPS)
    net = build([rnn(kind, units=8)])
    layer = net.layers[0]
    before = {k for k, v in vars(layer).items() if isinstance(v, np.ndarray)}
    net.forward(x)
    assert {k for k, v in vars(layer).items() if isinstance(v, np.ndarray)} == before
    net.logits(x, training=True)
    assert {k for k, v in vars(layer).items() if isinstance(v, np.ndarray)} > before


def test_same_seed_gives_identical_weights():
    a, b, c = _short_training(0), _short_training(0), _short_training(1)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert any(not np.array_equal(a[k], c[k]) for k in a)


# -- learning ------------------------------------------------------------------------------------

def xor_first_last(n, steps, rng):
    """Label = first bit XOR last bit of a +-1 bit string (with a little noise): the answer
    needs the first step remembered across all the distractors, and is 50/50 by chance."""
    bits = rng.integers(0, 2, size=(n, steps))
    x = (2.0 * bits - 1)[..., None] + rng.normal(0, 0.1, size=(n, steps, 1))
    return x, bits[:, 0] ^ bits[:, -1]


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_learns_xor_of_first_and_last_bit(kind):
    rng = np.random.default_rng(0)
    steps = 10
    x, y = xor_first_last(1200, steps, rng)
    x_test, y_test = xor_first_last(400, steps, rng)
    net = build([rnn(kind, units=16), {"type": "dense", "units": 1, "activation": "sigmoid"}],
                loss="binary_crossentropy", input_shape=(steps, 1), dtype="float32", seed=0)
    train(net, x, y, {"epochs": 25, "batch_size": 32, "seed": 0,
                      "optimizer": {"type": "adam", "learning_rate": 0.01}})
    accuracy = float(((net.forward(x_test)[:, 0] > 0.5) == y_test).mean())
    assert accuracy >= 0.95, accuracy


def noisy_sines(n, steps, rng):
    """Windows of sine waves with random frequency and phase plus noise; target: the next value."""
    freq = rng.uniform(0.1, 0.4, size=(n, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1))
    s = np.sin(freq * np.arange(steps + 1) + phase) + rng.normal(0, 0.05, size=(n, steps + 1))
    return s[:, :steps, None], s[:, steps:]


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_predicts_next_value_of_noisy_sines(kind):
    rng = np.random.default_rng(0)
    steps = 20
    x, y = noisy_sines(1000, steps, rng)
    x_test, y_test = noisy_sines(300, steps, rng)
    net = build([rnn(kind, units=16), {"type": "dense", "units": 1}], input_shape=(steps, 1),
                dtype="float32", seed=0)
    train(net, x, y, {"epochs": 20, "batch_size": 32, "seed": 0,
                      "optimizer": {"type": "adam", "learning_rate": 0.01}})
    mse = float(np.mean((net.forward(x_test) - y_test) ** 2))
    last = float(np.mean((x_test[:, -1] - y_test) ** 2))  # repeat the last value
    linear = float(np.mean((2 * x_test[:, -1] - x_test[:, -2] - y_test) ** 2))  # extrapolate
    # seed 0 gives about 0.3x the better baseline (0.006 vs 0.021; the noise floor is 0.0025);
    # other seeds range 0.27x-0.5x, hence the looser bound
    assert mse < 0.7 * min(last, linear), (mse, last, linear)
