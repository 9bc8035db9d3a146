"""Losses, looked up by name. A loss receives the network's pre-activation output `z` and the
output activation, so that softmax + cross-entropy and sigmoid + binary cross-entropy use the
fused, stable gradient (p - y) computed from logits."""

from __future__ import annotations

import numpy as np

from .activations import Activation, _sigmoid
from .casting import narrowed


class Loss:
    name = ""
    classification = False
    # output activations the loss accepts; None means any
    requires_activation: tuple[str, ...] | None = None

    def prepare_targets(self, y: np.ndarray, output_shape: tuple, dtype) -> np.ndarray:
        """Check targets against the network's output shape and convert them once, before training."""
        y = np.asarray(y)
        if y.ndim == len(output_shape):  # one output per sample given as a flat vector
            y = y.reshape(y.shape + (1,)) if output_shape[-1] == 1 else y
        if y.shape[1:] != tuple(output_shape):
            raise ValueError(f"targets have shape {y.shape[1:]} per sample, the network outputs {tuple(output_shape)}")
        return narrowed(y, dtype, "targets")

    def __call__(self, activation: Activation, z: np.ndarray, y: np.ndarray,
                 sample_weight: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray]:
        """Returns (mean loss, dL/dz, activated output)."""
        a = activation.forward(z)
        per_sample, da = self.elementwise(a, y)
        loss, scale = _weighted_mean(per_sample, sample_weight, z.dtype)
        return loss, activation.backward(z, a, da * _expand(scale, da)), a

    def elementwise(self, a, y):
        """Per-sample losses (shape (n,)) and dLoss_i/da (unscaled)."""
        raise NotImplementedError

    def accuracy(self, a: np.ndarray, y: np.ndarray) -> float | None:
        return None


def _weighted_mean(per_sample: np.ndarray, w: np.ndarray | None, dtype):
    """Mean over samples (weighted by w), and the per-sample factor that the gradient needs."""
    n = per_sample.shape[0]
    if w is None:
        return float(per_sample.sum() / n), np.asarray(1.0 / n, dtype=dtype)
    total = w.sum()
    if total <= 0:  # a batch of zero-weight samples: nothing to learn, rather than 0/0 = NaN
        return 0.0, np.zeros(n, dtype=dtype)
    scale = (w / total).astype(dtype)
    return float((per_sample * w).sum() / total), scale


def _expand(scale, like):
    """Broadcast a per-sample (n,) factor against an (n, ...) array."""
    if scale.ndim == 0:
        return scale
    return scale.reshape(scale.shape + (1,) * (like.ndim - 1))


LOSSES: dict[str, Loss] = {}


def register(*names):
    def deco(cls):
        for n in names:
            LOSSES[n] = cls()
        cls.name = names[0]
        return cls
    return deco


def get_loss(name: str) -> Loss:
    return LOSSES[name]


class _ElementwiseRegression(Loss):
    def __call__(self, activation, z, y, sample_weight=None):
        a = activation.forward(z)
        n = a.shape[0]
        m = a[0].size  # outputs per sample: the per-sample loss is a mean over them
        per_elem, da = self.pointwise(a, y)
        per_sample = per_elem.reshape(n, -1).mean(axis=1)
        loss, scale = _weighted_mean(per_sample, sample_weight, z.dtype)
        da = da * (_expand(scale, da) / m)
        return loss, activation.backward(z, a, da), a


@register("mse", "mean_squared_error")
class MeanSquaredError(_ElementwiseRegression):
    def pointwise(self, a, y):
        d = a - y
        return d * d, 2 * d


@register("mae", "mean_absolute_error")
class MeanAbsoluteError(_ElementwiseRegression):
    def pointwise(self, a, y):
        d = a - y
        return np.abs(d), np.sign(d)


@register("huber")
class Huber(_ElementwiseRegression):
    delta = 1.0

    def pointwise(self, a, y):
        d = a - y
        ad = np.abs(d)
        quad = ad <= self.delta
        loss = np.where(quad, 0.5 * d * d, self.delta * (ad - 0.5 * self.delta))
        return loss, np.where(quad, d, self.delta * np.sign(d))


@register("binary_crossentropy")
class BinaryCrossEntropy(Loss):
    classification = True
    requires_activation = ("sigmoid",)

    def prepare_targets(self, y, output_shape, dtype):
        y = super().prepare_targets(y, output_shape, dtype)
        if not np.all((y == 0) | (y == 1)):
            raise ValueError("binary_crossentropy targets must be 0 or 1")
        return y

    def __call__(self, activation, z, y, sample_weight=None):
        n = z.shape[0]
        m = z[0].size
        # log(1 + e^z) - y z, written so that no exp overflows: max(z,0) - y z + log1p(e^-|z|)
        per_elem = np.maximum(z, 0) - y * z + np.log1p(np.exp(-np.abs(z)))
        a = _sigmoid(z)
        loss, scale = _weighted_mean(per_elem.reshape(n, -1).mean(axis=1), sample_weight, z.dtype)
        dz = (a - y) * (_expand(scale, z) / m)  # fused sigmoid + BCE gradient
        return loss, dz.astype(z.dtype, copy=False), a

    def accuracy(self, a, y):
        return float(((a > 0.5) == (y > 0.5)).mean())


@register("categorical_crossentropy", "sparse_categorical_crossentropy")
class CategoricalCrossEntropy(Loss):
    """Targets are class indices (n,) or one-hot / probability rows (n, k)."""

    classification = True
    requires_activation = ("softmax",)

    def prepare_targets(self, y, output_shape, dtype):
        y = np.asarray(y)
        k = output_shape[-1]
        lead = tuple(output_shape[:-1])
        if y.shape[1:] == lead:  # class indices
            if y.dtype.kind == "f":
                if not np.all(np.mod(y, 1) == 0):
                    raise ValueError("class labels must be whole numbers")
            elif y.dtype.kind not in "iu":
                raise ValueError("class labels must be integers")
            if y.size and (y.min() < 0 or y.max() >= k):
                raise ValueError(f"class labels must be in 0..{k - 1} for an output layer of {k} units")
            return y.astype(np.intp)
        if y.shape[1:] == tuple(output_shape):
            rows = y.reshape(-1, k).astype(np.float64)
            sums = rows.sum(axis=1)
            bad = np.flatnonzero((rows < 0).any(axis=1) | (rows > 1).any(axis=1) | (np.abs(sums - 1) > 1e-3))
            if len(bad):  # a negative "probability" makes the loss unbounded below
                raise ValueError(f"targets given as one-hot or probability rows need values in [0, 1] that sum "
                                 f"to 1; sample {bad[0] // (len(rows) // len(y))} has {rows[bad[0]].tolist()!r:.80}")
            # rows summing to 1 within 1e-3 are taken as given to 1: the fused gradient p - y is
            # the loss's gradient only for rows that sum to exactly 1
            return narrowed((rows / sums[:, None]).reshape(y.shape), dtype, "targets")
        raise ValueError(
            f"targets must be class indices of shape (n{''.join(f', {d}' for d in lead)}) or "
            f"one-hot rows of shape (n, {', '.join(map(str, output_shape))}); got {y.shape}")

    def __call__(self, activation, z, y, sample_weight=None):
        n, k = z.shape[0], z.shape[-1]
        shifted = z - z.max(axis=-1, keepdims=True)  # no exp can overflow
        p = np.exp(shifted)
        sums = p.sum(axis=-1, keepdims=True)
        p /= sums
        log_sums = np.log(sums)
        if y.dtype.kind in "iu":
            # row r's true class is picks[1][r]: -log p_y = log(sum e^shifted) - shifted_y
            picks = (np.arange(y.size), y.reshape(-1))
            per_elem = (log_sums.reshape(-1) - shifted.reshape(-1, k)[picks]).reshape(y.shape)
            dz = p.copy()
            dz.reshape(-1, k)[picks] -= 1  # fused softmax + cross-entropy gradient: p - onehot(y)
        else:
            per_elem = -(y * (shifted - log_sums)).sum(axis=-1)
            dz = p - y  # fused softmax + cross-entropy gradient
        steps = per_elem[0].size  # sequence outputs: the loss is a mean over steps too
        per_sample = per_elem if steps == 1 else per_elem.reshape(n, -1).mean(axis=1)
        loss, scale = _weighted_mean(per_sample, sample_weight, z.dtype)
        dz *= _expand(scale, dz) / steps
        return loss, dz, p

    def accuracy(self, a, y):
        pred = a.argmax(axis=-1)
        true = y if y.dtype.kind in "iu" else y.argmax(axis=-1)
        return np.count_nonzero(pred == true) / pred.size
