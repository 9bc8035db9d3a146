"""Activation functions, looked up by name. Each gives the forward value and the
gradient through it; all are stable for inputs of magnitude 1000 (no overflow warnings)."""

from __future__ import annotations

import numpy as np

from .constants import zeros


class Activation:
    name = ""
    # max(f(a), f(b)) == f(max(a, b)) exactly, in floating point and for the gradient too: the
    # network may then apply f after a max-pool instead of before it, on the 4x smaller array
    # (Network._activate_after_pooling). True of relu; a saturating or rounding f can turn two
    # different inputs into a tie, which would move a max-pool's gradient to another pixel.
    commutes_with_max = False
    # arrays the size of z that forward and backward allocate besides z and a, at most at once
    # (measured with tracemalloc): what a layer briefly needs beyond what it keeps (Layer.cost)
    temporaries = 0

    def forward(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, z: np.ndarray, a: np.ndarray, da: np.ndarray) -> np.ndarray:
        """dL/dz from dL/da; `a` is forward(z), passed in so it is not recomputed."""
        raise NotImplementedError


ACTIVATIONS: dict[str, Activation] = {}


def register(cls):
    ACTIVATIONS[cls.name] = cls()
    return cls


def get_activation(name: str) -> Activation:
    return ACTIVATIONS[name]


@register
class Linear(Activation):
    name = "linear"

    def forward(self, z):
        return z

    def backward(self, z, a, da):
        return da


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # exp of a non-positive number never overflows: 1/(1+e^-z) for z>=0, e^z/(1+e^z) otherwise
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(z.dtype, copy=False)


@register
class Sigmoid(Activation):
    name = "sigmoid"
    temporaries = 4

    def forward(self, z):
        return _sigmoid(z)

    def backward(self, z, a, da):
        return da * a * (1 - a)


@register
class Tanh(Activation):
    name = "tanh"
    temporaries = 3

    def forward(self, z):
        return np.tanh(z)

    def backward(self, z, a, da):
        return da * (1 - a * a)


@register
class Relu(Activation):
    name = "relu"
    temporaries = 3
    commutes_with_max = True

    def forward(self, z):
        return np.maximum(z, zeros(z.shape, z.dtype))  # max(z, 0); see constants.py

    def backward(self, z, a, da):
        return da * (z > 0)


@register
class LeakyRelu(Activation):
    name = "leaky_relu"
    temporaries = 4
    alpha = 0.01

    def forward(self, z):
        return np.where(z > 0, z, self.alpha * z)

    def backward(self, z, a, da):
        return np.where(z > 0, da, self.alpha * da)


@register
class Elu(Activation):
    name = "elu"
    temporaries = 4

    def forward(self, z):
        return np.where(z > 0, z, np.expm1(np.minimum(z, 0)))

    def backward(self, z, a, da):
        # for z <= 0, d/dz (e^z - 1) = e^z = a + 1
        return np.where(z > 0, da, da * (a + 1))


@register
class Gelu(Activation):
    """The tanh approximation (Hendrycks & Gimpel), as in GPT-2 and PyTorch's approximate='tanh'."""

    name = "gelu"
    temporaries = 8
    c = float(np.sqrt(2.0 / np.pi))  # a Python float: a NumPy float64 would upcast float32 arrays

    def forward(self, z):
        return 0.5 * z * (1 + np.tanh(self.c * (z + 0.044715 * z**3)))

    def backward(self, z, a, da):
        u = self.c * (z + 0.044715 * z**3)
        t = np.tanh(u)
        du = self.c * (1 + 3 * 0.044715 * z * z)
        return da * (0.5 * (1 + t) + 0.5 * z * (1 - t * t) * du)


@register
class Softplus(Activation):
    name = "softplus"
    temporaries = 6

    def forward(self, z):
        return np.logaddexp(0, z).astype(z.dtype, copy=False)

    def backward(self, z, a, da):
        return da * _sigmoid(z)


@register
class Softmax(Activation):
    """Over the last axis."""

    name = "softmax"
    temporaries = 4

    def forward(self, z):
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def backward(self, z, a, da):
        # Jacobian-vector product of softmax: a * (da - <da, a>)
        return a * (da - (da * a).sum(axis=-1, keepdims=True))
