"""The layer contract and the registry that turns spec dicts into layers.

A layer is a small object with `build`, `forward` and `backward` (deep-learning-from-scratch
style). `params` and `grads` map the same names to arrays; optimizers update `params` in place,
so a layer must never rebind them after `build`: the Network moves them into one flat vector
each (Network._pack) and a layer writes its gradients into `grads` in place (out=...).
`buffers` hold state that is saved with the weights but not trained (batch-norm running
statistics).

A layer keeps what backward needs of a batch only when `forward(x, training=True)`: inference
leaves nothing on the layer, so one network can answer several requests at once (the predict
endpoint's threads share a cached network)."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, ClassVar

import numpy as np

from ..activations import ACTIVATIONS, get_activation
from ..initializers import INITIALIZERS
from ..spec import Field, SpecError, _join, check_object

# While set, layers allocate no weights: every parameter is a zero-stride view of one element,
# so the size of a network can be known (and refused) before it is built for real.
SHAPES_ONLY: ContextVar[bool] = ContextVar("shapes_only", default=False)
# While set, layers allocate their weights as zeros and run no initialiser: every value is about
# to be replaced by given weights (Network.from_weights).
WEIGHTS_GIVEN: ContextVar[bool] = ContextVar("weights_given", default=False)


def _placeholder(shape: tuple[int, ...], dtype) -> np.ndarray:
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape, (0,) * len(shape))


def size_of(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


class ShapeError(ValueError):
    """The layer cannot take the shape the previous layer produces."""


LAYERS: dict[str, type[Layer]] = {}


def register(cls):
    LAYERS[cls.type_name] = cls
    return cls


class Layer:
    type_name: ClassVar[str] = ""
    fields: ClassVar[dict[str, Field]] = {}
    doc: ClassVar[str] = ""
    # names of params that L1/L2 penalties apply to (kernels, not biases)
    regularized: ClassVar[tuple[str, ...]] = ()
    # runs its input's first axis one step after another (recurrent layers)
    sequential: ClassVar[bool] = False

    def __init__(self, config: dict[str, Any], name: str):
        self.config = config
        self.name = name
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.input_shape: tuple[int, ...] = ()
        self.output_shape: tuple[int, ...] = ()
        self.l1 = float(config.get("l1") or 0.0)
        self.l2 = float(config.get("l2") or 0.0)

    # -- to implement -------------------------------------------------------------------
    def build(self, input_shape: tuple[int, ...], rng: np.random.Generator, dtype) -> tuple[int, ...]:
        """Allocate params for `input_shape` (one sample, no batch axis); return the output shape."""
        raise NotImplementedError

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Given dL/dy, fill self.grads and return dL/dx."""
        raise NotImplementedError

    def backward_params(self, dy: np.ndarray) -> None:
        """Like `backward` when nobody needs dL/dx (the first layer in training): layers whose
        dL/dx is a real cost (a GEMM, a col2im) override this to skip it."""
        self.backward(dy)

    @classmethod
    def check_extra(cls, checked: dict, path: str, errors: list) -> dict:
        """Cross-field checks beyond single-field bounds; override where a layer needs them."""
        return checked

    # -- helpers ------------------------------------------------------------------------
    def sublayers(self) -> list[Layer]:
        return []

    def add_param(self, key: str, value: np.ndarray) -> None:
        self.params[key] = value
        self.grads[key] = _placeholder(value.shape, value.dtype) if SHAPES_ONLY.get() else np.zeros_like(value)

    def init_param(self, key: str, initializer: str, shape, fan_in, fan_out, rng, dtype) -> None:
        if SHAPES_ONLY.get():
            self.add_param(key, _placeholder(tuple(shape), np.dtype(dtype)))
            return
        if WEIGHTS_GIVEN.get():
            self.add_param(key, np.zeros(tuple(shape), dtype))
            return
        value = INITIALIZERS[initializer](rng, tuple(shape), fan_in, fan_out, dtype)
        self.add_param(key, np.ascontiguousarray(value))

    def cost(self) -> tuple[int, int]:
        """(multiply-adds, values held) for one sample going forward in training: what a service
        bounds a job's time and memory by before building it. Values held are what the layer
        keeps of a sample for backward and the gradients it passes on (`transient` counts the
        rest); this default fits an element-wise layer (its output and its pre-activation)."""
        out = size_of(self.output_shape)
        return out, 2 * out

    def transient(self) -> int:
        """Values per sample this layer allocates and frees within its forward or backward (an
        activation's temporaries): counted once for the network, at the largest layer's."""
        return 0

    def loop_steps(self) -> int:
        """NumPy calls' worth of steps a batch goes through one after another in this layer
        (recurrent steps, window offsets): each costs about the same whatever the batch, a cost
        that multiply-adds do not show for small layers."""
        return self.input_shape[0] if self.sequential else 0

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type_name,
                "output_shape": list(self.output_shape),
                "params": int(sum(p.size for p in self.params.values()))
                + sum(s.describe()["params"] for s in self.sublayers())}


class PerFeatureLayer(Layer):
    """A layer with one statistic per feature along `axis` (batch_norm, normalization), taken
    over every other axis, the batch's included; `axis` counts the batch axis as 0, as Keras."""

    @classmethod
    def check_extra(cls, checked, path, errors):
        if checked.get("axis") == 0:
            errors.append({"path": f"{path}.axis", "message": "cannot be the batch axis (0)"})
        return checked

    def feature_axis(self, input_shape: tuple[int, ...]) -> int:
        """Sets axis, reduce (the other axes) and bshape (a statistic's broadcast shape); returns
        the number of features."""
        ndim = len(input_shape) + 1
        axis = self.config["axis"]
        if not -ndim <= axis < ndim or axis % ndim == 0:
            raise ShapeError(f"axis {axis} is not a feature axis of samples shaped {tuple(input_shape)} "
                             f"(batch axis 0, features 1..{ndim - 1} or negative)")
        self.axis = axis % ndim
        self.reduce = tuple(a for a in range(ndim) if a != self.axis)
        features = input_shape[self.axis - 1]
        self.bshape = tuple(features if a == self.axis else 1 for a in range(ndim))
        return features


class ActivatedLayer(Layer):
    """A layer followed by an activation. The network may hoist the activation of its last
    layer into the loss (softmax + cross-entropy fused), which is why it is swappable."""

    def set_activation(self, name: str) -> None:
        self.activation_name = name
        self.activation = get_activation(name)

    def __init__(self, config, name):
        super().__init__(config, name)
        self.set_activation(config.get("activation") or "linear")

    def transient(self) -> int:
        return self.activation.temporaries * size_of(self.output_shape)

    def activate(self, z: np.ndarray, training: bool) -> np.ndarray:
        a = self.activation.forward(z)
        if training:  # kept for backward; inference keeps nothing (see Layer)
            self._z, self._a = z, a
        return a

    def activation_backward(self, dy: np.ndarray) -> np.ndarray:
        return self.activation.backward(self._z, self._a, dy)


ACTIVATION_FIELD = Field("choice", default="linear", choices=tuple(ACTIVATIONS))
INITIALIZER_CHOICES = tuple(INITIALIZERS)
REGULARIZER_FIELDS = {
    "l1": Field("float", default=0.0, minimum=0, description="adds l1 * sum(|w|) over the kernel to the loss"),
    "l2": Field("float", default=0.0, minimum=0,
                description="adds l2 * sum(w^2) over the kernel to the loss (Keras; PyTorch's SGD weight_decay d "
                            "is l2 = d / 2)"),
}
COMMON_FIELDS = {
    "type": Field("str"),
    "name": Field("str", default=None, nullable=True, description="defaults to TYPE_INDEX"),
}


def check_layer_spec(spec: Any, path: str, errors: list) -> dict[str, Any] | None:
    """Validate one layer spec against its class's fields; returns the spec with defaults."""
    if not isinstance(spec, dict):
        errors.append({"path": path, "message": "must be an object"})
        return None
    kind = spec.get("type")
    if not isinstance(kind, str) or kind not in LAYERS:
        errors.append({"path": _join(path, "type"),
                       "message": f"unknown layer type {kind!r}; one of {', '.join(sorted(LAYERS))}"})
        return None
    cls = LAYERS[kind]
    checked = check_object(spec, {**COMMON_FIELDS, **cls.fields}, path, errors)
    return cls.check_extra(checked, path, errors)


def make_layers(specs: list[dict], path: str, input_shape: tuple[int, ...], rng, dtype,
                used_names: set[str]) -> tuple[list[Layer], tuple[int, ...]]:
    """Build checked layer specs in order, naming each and checking that shapes chain."""
    layers: list[Layer] = []
    shape = tuple(input_shape)
    counts: dict[str, int] = {}
    for i, spec in enumerate(specs):
        p = _join(path, i)
        cls = LAYERS[spec["type"]]
        name = spec.get("name")
        if not name:
            n = counts.get(cls.type_name, 0)
            while f"{cls.type_name}_{n}" in used_names:
                n += 1
            name = f"{cls.type_name}_{n}"
            counts[cls.type_name] = n + 1
        elif name in used_names or "/" in name:
            raise SpecError([{"path": _join(p, "name"),
                              "message": f"layer name {name!r} is used twice or contains '/'"}])
        used_names.add(name)
        layer = cls(spec, name)
        layer.path = p
        try:
            layer.input_shape = shape
            shape = tuple(layer.build(shape, rng, dtype))
            layer.output_shape = shape
        except ShapeError as exc:
            raise SpecError([{"path": p, "message": f"layer {name!r} ({cls.type_name}): {exc}"}]) from None
        layers.append(layer)
    return layers, shape
