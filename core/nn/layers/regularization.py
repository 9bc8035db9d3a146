"""Dropout and batch normalization: the two layers that behave differently in training.

Both follow the engine's `stochastic` convention. The Network sets `stochastic = False` inside
`loss_and_gradients`, so that call stays a deterministic function of the weights: dropout is
off, and batch norm still normalizes with the batch's statistics but leaves its running
statistics alone. The Trainer sets `rng` to its seeded Generator, so dropout masks are
reproducible and resume exactly from a checkpoint."""

from __future__ import annotations

import numpy as np

from ..spec import Field
from .base import Layer, PerFeatureLayer, register, size_of


class RateField(Field):
    """A probability in [0, 1): the spec layer has no exclusive maximum, so it lives here."""

    def check(self, value, path, errors):
        value = super().check(value, path, errors)
        if value is not None and value >= 1:
            errors.append({"path": path, "message": "must be < 1"})
            return None
        return value

    def json_schema(self):
        schema = super().json_schema()
        schema["exclusiveMaximum"] = schema.pop("maximum")
        return schema


@register
class Dropout(Layer):
    """Inverted dropout: in training each input is zeroed with probability `rate` and the
    survivors are scaled by 1 / (1 - rate), so inference is the identity."""

    type_name = "dropout"
    fields = {
        "rate": RateField("float", minimum=0, maximum=1, description="fraction of inputs to drop, in [0, 1)"),
    }
    doc = ("Inverted dropout: zeroes a fraction `rate` of the inputs in training and scales the rest "
           "by 1/(1-rate); the identity at inference.")

    def __init__(self, config, name):
        super().__init__(config, name)
        self.rate = float(config["rate"])
        self.stochastic = True
        self.rng: np.random.Generator | None = None

    def build(self, input_shape, rng, dtype):
        if self.rng is None:
            self.rng = rng  # until a Trainer hands over its own Generator
        return tuple(input_shape)

    def cost(self):
        out = size_of(self.output_shape)
        return out, 3 * out  # the output, the kept mask, and the output's gradient (measured)

    def forward(self, x, training):
        if not (training and self.stochastic and self.rate > 0):
            if training:
                self._mask = None
            return x
        keep = self.rng.random(x.shape, dtype=x.dtype) >= self.rate
        self._mask = keep * x.dtype.type(1 / (1 - self.rate))  # 0 or 1/(1-rate), in x's dtype
        return x * self._mask

    def backward(self, dy):
        return dy if self._mask is None else dy * self._mask


@register
class BatchNorm(PerFeatureLayer):
    """Batch normalization (Ioffe & Szegedy): y = gamma * (x - mean) / sqrt(var + epsilon) + beta,
    per feature along `axis`, with mean and (biased) variance taken over every other axis.

    Defaults follow Keras: momentum 0.99 (moving = momentum * moving + (1 - momentum) * batch),
    epsilon 1e-3, axis -1 (the feature axis of dense outputs and of channels_last images; use
    axis 1 after a channels_first conv). `axis` counts the batch axis as 0, as Keras does.
    Training normalizes with the batch's statistics; inference with the moving ones. A frozen
    layer (Network.freeze) normalizes with the moving ones in training too and leaves them
    alone, as in Keras: fine-tuning must not change what the frozen part computes."""

    type_name = "batch_norm"
    fields = {
        "axis": Field("int", default=-1, description="the feature axis, counting the batch axis as 0"),
        "momentum": Field("float", default=0.99, minimum=0, maximum=1,
                          description="weight of the old moving statistics at each update"),
        "epsilon": Field("float", default=1e-3, minimum=0, exclusive_minimum=True),
    }
    doc = ("Batch normalization over every axis but `axis` (-1: dense features and channels_last "
           "images; 1 for channels_first); Keras defaults: momentum 0.99, epsilon 1e-3.")

    def __init__(self, config, name):
        super().__init__(config, name)
        self.stochastic = True
        self.frozen = False

    def build(self, input_shape, rng, dtype):
        channels = self.feature_axis(input_shape)
        self.add_param("gamma", np.ones(channels, dtype=dtype))
        self.add_param("beta", np.zeros(channels, dtype=dtype))
        self.buffers["moving_mean"] = np.zeros(channels, dtype=dtype)
        self.buffers["moving_variance"] = np.ones(channels, dtype=dtype)
        return tuple(input_shape)

    def transient(self):
        return 3 * size_of(self.output_shape)  # the centred input, its square, the scaled result (measured)

    def forward(self, x, training):
        eps = self.config["epsilon"]
        gamma = self.params["gamma"].reshape(self.bshape)
        beta = self.params["beta"].reshape(self.bshape)
        batch_stats = training and not self.frozen
        if batch_stats:
            mean = x.mean(axis=self.reduce, keepdims=True)
            xc = x - mean
            var = (xc * xc).mean(axis=self.reduce, keepdims=True)
            if self.stochastic:  # real training only, never inside loss_and_gradients
                m = self.config["momentum"]
                for buf, stat in (("moving_mean", mean), ("moving_variance", var)):
                    b = self.buffers[buf]
                    b *= m
                    b += (1 - m) * stat.reshape(-1)
        else:
            xc = x - self.buffers["moving_mean"].reshape(self.bshape)
            var = self.buffers["moving_variance"].reshape(self.bshape)
        inv_std = 1 / np.sqrt(var + eps)
        xhat = xc * inv_std
        if training:
            self._inv_std, self._xhat, self._batch_stats = inv_std, xhat, batch_stats
        return xhat * gamma + beta

    def backward(self, dy):
        xhat, inv_std = self._xhat, self._inv_std
        dy.sum(axis=self.reduce, out=self.grads["beta"])
        (dy * xhat).sum(axis=self.reduce, out=self.grads["gamma"])
        dxhat = dy * self.params["gamma"].reshape(self.bshape)
        if not self._batch_stats:  # the moving statistics are constants
            return dxhat * inv_std
        # mean and variance depend on x too: dx = (dxhat - mean(dxhat) - xhat * mean(dxhat*xhat)) / std
        return inv_std * (dxhat - dxhat.mean(axis=self.reduce, keepdims=True)
                          - xhat * (dxhat * xhat).mean(axis=self.reduce, keepdims=True))
