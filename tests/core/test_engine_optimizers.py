"""Optimizers against independent textbook implementations, learning-rate schedules epoch by
epoch, and gradient clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.nn import Network, Trainer
from core.nn.optimizers import OPTIMIZERS
from core.nn.schedules import SCHEDULES
from core.nn.training import check_training_spec


def make_optimizer(**config):
    """The optimizer exactly as the trainer builds it: from a checked spec, defaults applied."""
    checked = check_training_spec({"optimizer": config})["optimizer"]
    return OPTIMIZERS[checked["type"]](checked), checked


def gradient_sequence(steps=5, shape=(3, 2), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape) for _ in range(steps)]


def run(opt, p0, grads, lr):
    p = {"w": p0.copy()}
    out = []
    for g in grads:
        opt.step(p, {"w": g.copy()}, lr)
        out.append(p["w"].copy())
    return out


P0 = np.array([[0.5, -1.0], [2.0, 0.1], [-0.3, 1.5]])


def test_sgd_matches_reference():
    opt, _ = make_optimizer(type="sgd", learning_rate=0.1)
    grads = gradient_sequence()
    p = P0.copy()
    for got, g in zip(run(opt, P0, grads, 0.1), grads, strict=True):
        p = p - 0.1 * g
        np.testing.assert_allclose(got, p, rtol=1e-15)


def test_momentum_matches_reference():
    """PyTorch's form, buf = mu*buf + g; p -= lr*buf, equals the engine's for a constant rate."""
    opt, _ = make_optimizer(type="sgd", momentum=0.9)
    grads = gradient_sequence()
    p, buf = P0.copy(), np.zeros_like(P0)
    for got, g in zip(run(opt, P0, grads, 0.05), grads, strict=True):
        buf = 0.9 * buf + g
        p = p - 0.05 * buf
        np.testing.assert_allclose(got, p, rtol=1e-12)


def test_nesterov_tracks_the_classical_look_ahead():
    """Classical Nesterov evaluates the gradient at the look-ahead point theta + mu*v. The
    engine's reformulation stores that look-ahead point as its parameter, so on a quadratic
    its iterates must equal theta_t + mu*v_t of the classical method."""
    a = np.array([[1.0, 3.0], [0.5, 2.0], [4.0, 0.2]])  # f(p) = 0.5 * sum(a * p^2)
    mu, lr = 0.9, 0.05
    opt, _ = make_optimizer(type="sgd", momentum=mu, nesterov=True)
    p = {"w": P0.copy()}
    theta, v = P0.copy(), np.zeros_like(P0)
    for _ in range(8):
        opt.step(p, {"w": a * p["w"]}, lr)
        v = mu * v - lr * a * (theta + mu * v)
        theta = theta + v
        np.testing.assert_allclose(p["w"], theta + mu * v, rtol=1e-12)


def test_nesterov_differs_from_plain_momentum():
    grads = gradient_sequence()
    plain = run(make_optimizer(type="sgd", momentum=0.9)[0], P0, grads, 0.1)
    nest = run(make_optimizer(type="sgd", momentum=0.9, nesterov=True)[0], P0, grads, 0.1)
    assert not np.allclose(plain[-1], nest[-1])


def adam_reference(p, grads, lr, b1, b2, eps, weight_decay=0.0):
    """Kingma & Ba, Algorithm 1, with epsilon added to the *uncorrected* sqrt(v) as in their
    section 2 and in Keras: in Algorithm 1's terms eps becomes eps / sqrt(1 - b2^t). AdamW
    (Loshchilov & Hutter, as in PyTorch) first shrinks p by lr * weight_decay."""
    m, v, out = np.zeros_like(p), np.zeros_like(p), []
    for t, g in enumerate(grads, start=1):
        p = p * (1 - lr * weight_decay)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps / math.sqrt(1 - b2**t))
        out.append(p)
    return out


ADAM_RTOL = 1e-12


@pytest.mark.parametrize("config", [{}, {"beta1": 0.5, "beta2": 0.9, "epsilon": 1e-6}])
def test_adam_matches_reference(config):
    opt, c = make_optimizer(type="adam", learning_rate=0.01, **config)
    grads = gradient_sequence(steps=6)
    got = run(opt, P0, grads, 0.01)
    want = adam_reference(P0, grads, 0.01, c["beta1"], c["beta2"], c["epsilon"])
    for g_, w_ in zip(got, want, strict=True):
        np.testing.assert_allclose(g_, w_, rtol=ADAM_RTOL)


@pytest.mark.parametrize("kind", ["adam", "adamw"])
def test_adam_on_a_long_flat_vector_goes_block_by_block_with_the_same_result(kind):
    """The trainer passes flat vectors, which Adam updates BLOCK values at a time (cache-sized
    blocks); an n-d array is updated in one go. Element by element the two are the same."""
    from core.nn.optimizers import BLOCK

    size = 2 * BLOCK + 7  # two whole blocks and a short one
    flat, shaped = make_optimizer(type=kind)[0], make_optimizer(type=kind)[0]
    grads = gradient_sequence(steps=4, shape=(size,), seed=3)
    p0 = np.random.default_rng(4).normal(size=size).astype(np.float32)
    got = run(flat, p0, [g.astype(np.float32) for g in grads], 0.01)
    want = run(shaped, p0.reshape(1, size), [g.astype(np.float32).reshape(1, size) for g in grads], 0.01)
    for g_, w_ in zip(got, want, strict=True):
        np.testing.assert_array_equal(g_, w_.reshape(size))
    assert not np.array_equal(got[-1], p0)


def test_adam_first_step_moves_each_weight_by_the_learning_rate():
    opt, _ = make_optimizer(type="adam")
    g = np.array([[3.0, -0.2], [0.05, 50.0], [-7.0, 0.5]])
    (p1,) = run(opt, P0, [g], 0.01)
    np.testing.assert_allclose(P0 - p1, 0.01 * np.sign(g), rtol=1e-5)


def test_adamw_matches_reference():
    opt, c = make_optimizer(type="adamw", learning_rate=0.01, weight_decay=0.1)
    grads = gradient_sequence(steps=6)
    got = run(opt, P0, grads, 0.01)
    want = adam_reference(P0, grads, 0.01, c["beta1"], c["beta2"], c["epsilon"], weight_decay=0.1)
    for g_, w_ in zip(got, want, strict=True):
        np.testing.assert_allclose(g_, w_, rtol=ADAM_RTOL)


def test_adamw_decay_is_decoupled_from_the_gradient():
    """With zero gradients Adam stands still while AdamW shrinks weights by (1 - lr*wd) per
    step; an L2 term added to the gradient would instead be normalised away by Adam."""
    zeros = [np.zeros_like(P0)] * 3
    np.testing.assert_array_equal(run(make_optimizer(type="adam")[0], P0, zeros, 0.1)[-1], P0)
    decayed = run(make_optimizer(type="adamw", weight_decay=0.2)[0], P0, zeros, 0.1)[-1]
    np.testing.assert_allclose(decayed, P0 * (1 - 0.1 * 0.2) ** 3, rtol=1e-12)
    coupled = run(make_optimizer(type="adam")[0], P0, [0.2 * P0] * 3, 0.1)[-1]
    assert not np.allclose(coupled, decayed)


def test_rmsprop_matches_reference():
    opt, c = make_optimizer(type="rmsprop", rho=0.8)
    grads = gradient_sequence()
    p, s = P0.copy(), np.zeros_like(P0)
    for got, g in zip(run(opt, P0, grads, 0.01), grads, strict=True):
        s = 0.8 * s + 0.2 * g * g
        p = p - 0.01 * g / (np.sqrt(s) + c["epsilon"])
        np.testing.assert_allclose(got, p, rtol=1e-12)


def test_adagrad_matches_reference():
    opt, c = make_optimizer(type="adagrad")
    grads = gradient_sequence()
    p, s = P0.copy(), np.zeros_like(P0)
    for got, g in zip(run(opt, P0, grads, 0.1), grads, strict=True):
        s = s + g * g
        p = p - 0.1 * g / (np.sqrt(s) + c["epsilon"])
        np.testing.assert_allclose(got, p, rtol=1e-12)


OPTIMIZER_CONFIGS = [{"type": "sgd", "momentum": 0.9, "nesterov": True}, {"type": "adam"},
                     {"type": "adamw"}, {"type": "rmsprop"}, {"type": "adagrad"}]


def test_every_optimizer_has_a_config_here():
    assert {c["type"] for c in OPTIMIZER_CONFIGS} == set(OPTIMIZERS)


@pytest.mark.parametrize("config", OPTIMIZER_CONFIGS, ids=lambda c: c["type"])
def test_optimizer_state_round_trips(config):
    """Three steps, save, load into a fresh optimizer, two more: the same as five in a row."""
    grads = gradient_sequence(steps=5)
    straight = run(make_optimizer(**config)[0], P0, grads, 0.01)[-1]
    first = make_optimizer(**config)[0]
    p = run(first, P0, grads[:3], 0.01)[-1]
    meta, arrays = first.state_dict()
    second = make_optimizer(**config)[0]
    second.load_state_dict(meta, {k: a.copy() for k, a in arrays.items()})
    np.testing.assert_array_equal(run(second, p, grads[3:], 0.01)[-1], straight)


def test_optimizer_state_is_a_snapshot():
    """state_dict must not hand out live slots that later steps would overwrite."""
    opt = make_optimizer(type="adam")[0]
    grads = gradient_sequence(steps=2)
    run(opt, P0, grads[:1], 0.01)
    _, arrays = opt.state_dict()
    before = {k: a.copy() for k, a in arrays.items()}
    opt.step({"w": P0.copy()}, {"w": grads[1]}, 0.01)
    for k in before:
        np.testing.assert_array_equal(arrays[k], before[k])


# -- schedules --------------------------------------------------------------------------------

def schedule(epochs=10, base_lr=0.1, **config):
    checked = check_training_spec({"optimizer": {"type": "sgd", "learning_rate": base_lr},
                                   "lr_schedule": config})["lr_schedule"]
    return SCHEDULES[checked["type"]](checked, base_lr, epochs)


def test_constant_step_exponential_and_cosine_rates():
    epochs = range(10)
    assert [schedule(type="constant").lr(e) for e in epochs] == [0.1] * 10
    step = [schedule(type="step", step_size=3, gamma=0.5).lr(e) for e in epochs]
    assert step == pytest.approx([0.1] * 3 + [0.05] * 3 + [0.025] * 3 + [0.0125])
    expo = [schedule(type="exponential", gamma=0.9).lr(e) for e in epochs]
    assert expo == pytest.approx([0.1 * 0.9**e for e in epochs])
    cos = [schedule(type="cosine", min_lr=0.01).lr(e) for e in epochs]
    assert cos == pytest.approx([0.01 + 0.045 * (1 + math.cos(math.pi * e / 9)) for e in epochs])
    assert cos[0] == pytest.approx(0.1) and cos[-1] == pytest.approx(0.01)
    assert all(a > b for a, b in zip(cos, cos[1:], strict=False))


def test_reduce_on_plateau_waits_patience_epochs():
    """patience = epochs without improvement that are tolerated; the next one cuts the rate."""
    s = schedule(type="reduce_on_plateau", monitor="val_loss", patience=2, factor=0.5,
                 min_delta=0.01, min_lr=0.02)
    rates = []
    for value in [1.0, 0.9, 0.895, 0.9, 0.91, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]:
        rates.append(s.lr(len(rates)))
        s.observe({"loss": 0.0, "val_loss": value})
    # improvements at epochs 0, 1 and 5; 0.895 is within min_delta, so not one
    assert rates == pytest.approx([0.1] * 5 + [0.05] + [0.05] * 3 + [0.025] * 3 + [0.02] * 2)


def test_reduce_on_plateau_maximises_accuracy_like_metrics():
    s = schedule(type="reduce_on_plateau", monitor="val_accuracy", patience=0, factor=0.5)
    for value in [0.5, 0.6, 0.7, 0.8]:
        s.observe({"loss": 1.0, "val_accuracy": value})
    assert s.lr(4) == pytest.approx(0.1)
    s.observe({"loss": 1.0, "val_accuracy": 0.7})
    assert s.lr(5) == pytest.approx(0.05)


def test_trainer_records_the_scheduled_rate():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 2)), rng.normal(size=16)
    net = Network.from_spec({"input_shape": [2], "layers": [{"type": "dense", "units": 1}],
                             "loss": "mse"})
    result = Trainer(net, {"epochs": 5, "optimizer": {"type": "sgd", "learning_rate": 0.08},
                           "lr_schedule": {"type": "step", "step_size": 2, "gamma": 0.5}}).fit(x, y)
    assert [r["lr"] for r in result.history] == pytest.approx([0.08, 0.08, 0.04, 0.04, 0.02])


# -- clipping ---------------------------------------------------------------------------------

def one_sgd_step(clip):
    """Weights before, weights after one full-batch SGD step, and the unclipped gradients."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(12, 3)), 10 * rng.normal(size=(12, 2))
    net = Network.from_spec({"input_shape": [3], "loss": "mse", "dtype": "float64",
                             "layers": [{"type": "dense", "units": 4, "activation": "tanh"},
                                        {"type": "dense", "units": 2}]})
    before = net.get_weights()
    _, grads = net.loss_and_gradients(x, y)
    Trainer(net, {"epochs": 1, "batch_size": 12, "optimizer": {"type": "sgd", "learning_rate": 1.0},
                  **clip}).fit(x, y)
    return before, net.get_weights(), grads


def test_clip_value_bounds_every_element():
    before, after, grads = one_sgd_step({"clip_value": 0.5})
    assert max(np.abs(g).max() for g in grads.values()) > 0.5  # clipping has work to do
    for k in before:
        np.testing.assert_allclose(before[k] - after[k], np.clip(grads[k], -0.5, 0.5), rtol=1e-12)


def test_clip_norm_rescales_the_global_norm():
    before, after, grads = one_sgd_step({"clip_norm": 1.0})
    norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
    assert norm > 1.0
    for k in before:
        np.testing.assert_allclose(before[k] - after[k], grads[k] / norm, rtol=1e-9)


def test_clip_norm_leaves_small_gradients_alone():
    before, after, grads = one_sgd_step({"clip_norm": 1e6})
    for k in before:
        np.testing.assert_allclose(before[k] - after[k], grads[k], rtol=1e-12)


def test_adam_reads_checkpoints_that_hold_the_averages():
    """Checkpoints written before Adam kept sums hold m and v; loading converts them."""
    grads = gradient_sequence(steps=5)
    straight = run(make_optimizer(type="adam")[0], P0, grads, 0.01)[-1]
    first, c = make_optimizer(type="adam")
    p = run(first, P0, grads[:3], 0.01)[-1]
    meta, arrays = first.state_dict()
    assert set(arrays) == {"m_sum:w", "v_sum:w"}
    old = {"m:w": arrays["m_sum:w"] * (1 - c["beta1"]), "v:w": arrays["v_sum:w"] * (1 - c["beta2"])}
    second = make_optimizer(type="adam")[0]
    second.load_state_dict(meta, old)
    np.testing.assert_allclose(run(second, p, grads[3:], 0.01)[-1], straight, rtol=1e-12)
