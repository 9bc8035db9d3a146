"""Initializers: seeded, the requested dtype, and the variance each one promises."""

from __future__ import annotations

import numpy as np
import pytest

from core.nn.initializers import INITIALIZERS

FAN_IN, FAN_OUT = 200, 300
SHAPE = (FAN_IN, FAN_OUT)

# name -> (distribution, standard deviation it promises)
EXPECTED = {
    "glorot_uniform": ("uniform", np.sqrt(2.0 / (FAN_IN + FAN_OUT))),
    "glorot_normal": ("normal", np.sqrt(2.0 / (FAN_IN + FAN_OUT))),
    "he_uniform": ("uniform", np.sqrt(2.0 / FAN_IN)),
    "he_normal": ("normal", np.sqrt(2.0 / FAN_IN)),
    "lecun_uniform": ("uniform", np.sqrt(1.0 / FAN_IN)),
    "lecun_normal": ("normal", np.sqrt(1.0 / FAN_IN)),
}


def draw(name, shape=SHAPE, seed=0, dtype=np.float32):
    return INITIALIZERS[name](np.random.default_rng(seed), shape, shape[0], shape[-1], dtype)


@pytest.mark.parametrize("name", sorted(INITIALIZERS))
def test_seeded_shape_and_dtype(name):
    for dtype in (np.float32, np.float64):
        a = draw(name, shape=(20, 30), dtype=dtype)
        assert a.shape == (20, 30) and a.dtype == dtype
        np.testing.assert_array_equal(a, draw(name, shape=(20, 30), dtype=dtype))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_variance_scaling(name):
    kind, std = EXPECTED[name]
    a = draw(name, dtype=np.float64)
    assert a.std() == pytest.approx(std, rel=0.02)
    assert abs(a.mean()) < 0.1 * std
    if kind == "uniform":  # bounded by sqrt(3) standard deviations
        assert np.abs(a).max() <= np.sqrt(3) * std
    assert not np.array_equal(a, draw(name, seed=1, dtype=np.float64))


def test_aliases():
    assert INITIALIZERS["xavier_uniform"] is INITIALIZERS["glorot_uniform"]
    assert INITIALIZERS["lecun"] is INITIALIZERS["lecun_normal"]
    assert (draw("zeros") == 0).all() and (draw("ones") == 1).all()


@pytest.mark.parametrize("shape", [(8, 8), (12, 5), (5, 12), (3, 4, 6)])
def test_orthogonal(shape):
    a = draw("orthogonal", shape=shape, dtype=np.float64).reshape(-1, shape[-1])
    rows, cols = a.shape
    gram = a.T @ a if rows >= cols else a @ a.T
    np.testing.assert_allclose(gram, np.eye(min(rows, cols)), atol=1e-12)
