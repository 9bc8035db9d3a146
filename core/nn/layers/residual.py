"""Residual block: y = activation(x + f(x)), f being a stack of inner layers (He et al.).

The identity path lets gradients skip f, which is what makes deep stacks trainable."""

from __future__ import annotations

from ..spec import Field, _join
from .base import ACTIVATION_FIELD, ActivatedLayer, ShapeError, check_layer_spec, make_layers, register, size_of


@register
class Residual(ActivatedLayer):
    """y = activation(x + f(x)), f = the inner `layers` in order; f must keep the input's shape.
    The activation (default linear) is applied after the sum, as ResNet's post-add ReLU.
    Inner weights are named 'BLOCK/INNER/PARAM', e.g. residual_0/dense_0/kernel."""

    type_name = "residual"
    fields = {
        "layers": Field("list", min_items=1, description="inner layer specs, applied in order"),
        "activation": ACTIVATION_FIELD,
    }

    @classmethod
    def check_extra(cls, checked, path, errors):
        if isinstance(checked.get("layers"), list):
            checked["layers"] = [check_layer_spec(s, _join(_join(path, "layers"), i), errors)
                                 for i, s in enumerate(checked["layers"])]
        return checked

    def build(self, input_shape, rng, dtype):
        path = _join(getattr(self, "path", self.name), "layers")
        self.inner, out = make_layers(self.config["layers"], path, tuple(input_shape), rng, dtype, set())
        if tuple(out) != tuple(input_shape):
            raise ShapeError(f"its inner layers turn {tuple(input_shape)} into {tuple(out)}; "
                             "x + f(x) needs f to keep the input shape")
        return tuple(input_shape)

    def sublayers(self):
        return self.inner

    def cost(self):
        inner = [layer.cost() for layer in self.inner]
        out = size_of(self.output_shape)
        return sum(m for m, _ in inner) + out, sum(v for _, v in inner) + 3 * out  # x + f(x), and its gradient

    def forward(self, x, training):
        h = x
        for layer in self.inner:
            h = layer.forward(h, training)
        return self.activate(x + h, training)

    def backward(self, dy):
        dz = self.activation_backward(dy)
        g = dz
        for layer in reversed(self.inner):
            g = layer.backward(g)
        return dz + g  # the identity path plus the path through f
