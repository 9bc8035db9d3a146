"""Fully connected layer, and a stand-alone activation layer."""

from __future__ import annotations

import numpy as np

from ..constants import column_sums
from ..spec import Field
from .base import (
    ACTIVATION_FIELD,
    INITIALIZER_CHOICES,
    REGULARIZER_FIELDS,
    ActivatedLayer,
    register,
    size_of,
)


@register
class Dense(ActivatedLayer):
    """y = activation(x @ kernel + bias), applied over the last axis (so it also works per time
    step on (steps, features) inputs)."""

    type_name = "dense"
    regularized = ("kernel",)
    fields = {
        "units": Field("int", minimum=1, description="output width"),
        "activation": ACTIVATION_FIELD,
        "use_bias": Field("bool", default=True),
        "kernel_initializer": Field("choice", default="glorot_uniform", choices=INITIALIZER_CHOICES),
        "bias_initializer": Field("choice", default="zeros", choices=INITIALIZER_CHOICES),
        **REGULARIZER_FIELDS,
    }

    def build(self, input_shape, rng, dtype):
        fan_in, units = input_shape[-1], self.config["units"]
        self.init_param("kernel", self.config["kernel_initializer"], (fan_in, units), fan_in, units, rng, dtype)
        if self.config["use_bias"]:
            self.init_param("bias", self.config["bias_initializer"], (units,), fan_in, units, rng, dtype)
        return tuple(input_shape[:-1]) + (units,)

    def cost(self):
        positions = size_of(self.input_shape[:-1])  # dense on (..., features) acts on each position
        return positions * self.params["kernel"].size, 2 * size_of(self.output_shape)

    def forward(self, x, training):
        if training:
            self._x = x
        z = x @ self.params["kernel"]
        if "bias" in self.params:
            z += self.params["bias"]
        return self.activate(z, training)

    def backward(self, dy):
        dz = self._weight_grads(dy)
        return dz @ self.params["kernel"].T  # dL/dx = dz W^T

    def backward_params(self, dy):
        self._weight_grads(dy)

    def _weight_grads(self, dy):
        """Fills dL/dW = x^T dz and dL/db = the column sums of dz; returns dz = dL/d(x W + b)."""
        dz = self.activation_backward(dy)
        x2 = self._x.reshape(-1, self._x.shape[-1])
        dz2 = dz.reshape(-1, dz.shape[-1])
        np.matmul(x2.T, dz2, out=self.grads["kernel"])
        if "bias" in self.params:
            column_sums(dz2, out=self.grads["bias"])
        return dz


@register
class Activation(ActivatedLayer):
    """An activation on its own, for example after batch_norm."""

    type_name = "activation"
    fields = {"activation": Field("choice", choices=ACTIVATION_FIELD.choices)}

    def build(self, input_shape, rng, dtype):
        return tuple(input_shape)

    def forward(self, x, training):
        return self.activate(x, training)

    def backward(self, dy):
        return self.activation_backward(dy)
