"""Weight initializers, looked up by name. Each draws from the network's seeded Generator."""

from __future__ import annotations

import numpy as np


def _uniform(rng, shape, limit, dtype):
    return rng.uniform(-limit, limit, size=shape).astype(dtype)


def _normal(rng, shape, std, dtype):
    return (rng.standard_normal(size=shape) * std).astype(dtype)


def glorot_uniform(rng, shape, fan_in, fan_out, dtype):
    return _uniform(rng, shape, np.sqrt(6.0 / (fan_in + fan_out)), dtype)


def glorot_normal(rng, shape, fan_in, fan_out, dtype):
    return _normal(rng, shape, np.sqrt(2.0 / (fan_in + fan_out)), dtype)


def he_uniform(rng, shape, fan_in, fan_out, dtype):
    return _uniform(rng, shape, np.sqrt(6.0 / fan_in), dtype)


def he_normal(rng, shape, fan_in, fan_out, dtype):
    return _normal(rng, shape, np.sqrt(2.0 / fan_in), dtype)


def lecun_uniform(rng, shape, fan_in, fan_out, dtype):
    return _uniform(rng, shape, np.sqrt(3.0 / fan_in), dtype)


def lecun_normal(rng, shape, fan_in, fan_out, dtype):
    return _normal(rng, shape, np.sqrt(1.0 / fan_in), dtype)


def zeros(rng, shape, fan_in, fan_out, dtype):
    return np.zeros(shape, dtype=dtype)


def ones(rng, shape, fan_in, fan_out, dtype):
    return np.ones(shape, dtype=dtype)


def orthogonal(rng, shape, fan_in, fan_out, dtype):
    """Saxe et al.: the Q of a QR decomposition of a Gaussian matrix, sign-corrected so that it
    is uniformly distributed; the default for recurrent kernels, whose repeated products keep
    their norm."""
    rows = int(np.prod(shape[:-1]))
    cols = shape[-1]
    a = rng.standard_normal(size=(max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return np.ascontiguousarray(q[:rows, :cols].reshape(shape), dtype=dtype)


INITIALIZERS = {
    "glorot_uniform": glorot_uniform,
    "xavier_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "xavier_normal": glorot_normal,
    "he_uniform": he_uniform,
    "he_normal": he_normal,
    "lecun_uniform": lecun_uniform,
    "lecun_normal": lecun_normal,
    "lecun": lecun_normal,
    "zeros": zeros,
    "ones": ones,
    "orthogonal": orthogonal,
}
