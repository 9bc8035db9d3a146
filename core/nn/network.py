"""A feed-forward stack of layers with a loss: forward, backward, and weights by name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .activations import get_activation
from .casting import narrowed
from .layers.base import (
    SHAPES_ONLY,
    WEIGHTS_GIVEN,
    ActivatedLayer,
    Layer,
    check_layer_spec,
    make_layers,
    size_of,
)
from .layers.conv import Conv2D, MaxPool2D, Pool2D
from .layers.preprocessing import Normalization
from .layers.regularization import BatchNorm
from .losses import LOSSES, get_loss
from .spec import Field, SpecError, check_object

DTYPES = ("float32", "float64")
INFERENCE_BYTES = 64 * 2**20  # what one inference batch may hold (see Network.forward)

MODEL_FIELDS = {
    "input_shape": Field("int_list", description="shape of one sample, without the batch axis"),
    "layers": Field("list", min_items=1),
    "loss": Field("choice", choices=tuple(LOSSES)),
    "dtype": Field("choice", default="float32", choices=DTYPES,
                   description="float32 (fast, default) or float64"),
}


def check_model_spec(spec: Any) -> dict[str, Any]:
    """Field-level validation of the `model` document; raises SpecError naming every bad path."""
    errors: list[dict[str, str]] = []
    checked = check_object(spec, MODEL_FIELDS, "model", errors)
    if isinstance(checked.get("layers"), list):
        checked["layers"] = [check_layer_spec(s, f"model.layers[{i}]", errors)
                             for i, s in enumerate(checked["layers"])]
    if errors:
        raise SpecError(errors)
    return checked


def count_parameters(spec: dict[str, Any]) -> int:
    """The number of trainable values a spec builds, found without allocating them (so that a
    service can refuse a network too large to build). Raises SpecError like Network does."""
    return shapes_only(spec).parameter_count


def shapes_only(spec: dict[str, Any]) -> Network:
    """The network a spec builds, its weights not allocated: its shapes, parameter count and
    cost, for refusing what is too large to build or train. Raises SpecError like Network."""
    token = SHAPES_ONLY.set(True)
    try:
        return Network(spec)
    finally:
        SHAPES_ONLY.reset(token)


def walk(layers: list[Layer]) -> Iterator[Layer]:
    """Every layer, composite blocks before their inner layers."""
    for layer in layers:
        yield layer
        yield from walk(layer.sublayers())


class Network:
    """Build with `Network.from_spec(model_spec, seed=0)`. Weight names are 'LAYER/PARAM'."""

    def __init__(self, spec: dict[str, Any], seed: int | None = 0, dtype: str | None = None,
                 inference: bool = False):
        spec = check_model_spec(spec)
        self.inference = inference
        self.spec = spec
        try:
            self.dtype = np.dtype(dtype or spec["dtype"])
        except TypeError:  # not a dtype at all
            self.dtype = None
        if self.dtype is None or self.dtype.name not in DTYPES:
            raise SpecError([{"path": "model.dtype", "message": f"must be one of {', '.join(DTYPES)}"}])
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.input_shape = tuple(spec["input_shape"])
        self.loss = get_loss(spec["loss"])
        self.layers, self.output_shape = make_layers(spec["layers"], "model.layers", self.input_shape,
                                                     self.rng, self.dtype, set())
        for layer in walk(self.layers):
            if isinstance(layer, Normalization) and layer is not self.layers[0]:
                raise SpecError([{"path": layer.path, "message": "normalization adapts to the network's inputs: "
                                                                 "it must be the first layer"}])
        last = self.layers[-1]
        out_act = last.activation_name if isinstance(last, ActivatedLayer) else "linear"
        if self.loss.requires_activation and out_act not in self.loss.requires_activation:
            raise SpecError([{"path": f"model.layers[{len(self.layers) - 1}].activation",
                              "message": f"loss {spec['loss']} needs a {self.loss.requires_activation[0]} "
                                         f"output layer, got {out_act}"}])
        if out_act == "softmax" and isinstance(last, Conv2D) and not last.channels_last:
            # the output activation runs over the last axis, which here is the width
            raise SpecError([{"path": f"model.layers[{len(self.layers) - 1}].data_format",
                              "message": "a softmax output over channels needs channels_last: with "
                                         "channels_first it would run over the image's width"}])
        # The output activation is applied by the loss (fused gradients) or at inference.
        self.output_activation = get_activation(out_act)
        if isinstance(last, ActivatedLayer):
            last.set_activation("linear")
        self._activate_after_pooling()
        self._hand_convs_to_pools()
        self.frozen: set[str] = set()
        # training backpropagates no further than into the first layer that has weights
        self._first_weighted = next((i for i, layer in enumerate(self.layers)
                                     if any(sub.params for sub in walk([layer]))), len(self.layers))
        self._penalized = [layer for layer in walk(self.layers) if layer.l1 or layer.l2]
        if not SHAPES_ONLY.get():
            self._pack(inference)

    def _activate_after_pooling(self) -> None:
        """conv -> relu -> max-pool computes relu(max-pool(conv)) instead: the same output and
        the same gradients (max commutes with relu, ties included), with the activation and its
        gradient on the pooled array, a quarter of the size for 2x2 windows."""
        for layer, after in zip(self.layers[:-1], self.layers[1:], strict=True):
            if (isinstance(layer, ActivatedLayer) and isinstance(after, MaxPool2D)
                    and layer.activation.commutes_with_max):
                after.activation = layer.activation
                layer.set_activation("linear")

    def _hand_convs_to_pools(self) -> None:
        """conv -> pool whose windows tile the image (stride = window, no padding): the conv
        orders its im2col rows by window offset, so that its GEMM output is the pool's stack of
        window offsets itself (Pool2D.stack) and the pool's gradient is the conv's dz, with no
        gather or scatter between the two. The conv also skips the pixels no window reads
        (an odd edge row or column): they change neither the output nor any gradient."""
        for layer, after in zip(self.layers[:-1], self.layers[1:], strict=True):
            if (isinstance(layer, Conv2D) and isinstance(after, Pool2D) and not after.padded
                    and after.window == after.strides and layer.channels_last == after.channels_last):
                layer.pool_tile, after.takes_stack = after.window, True

    def _pack(self, inference: bool) -> None:
        """Make every trainable array a view into one contiguous vector, `flat_params`, and every
        gradient a view into `flat_grads` (same layout), so that optimizer steps, clipping and
        norms cost a few NumPy calls per batch however many arrays the network has. A top-level
        layer's arrays (its sublayers' included) form one block: `layer_slices[name]`.
        An inference network (what the predict endpoint builds) gets no gradient vector: its
        gradients are read-only zero views, so that nothing can train it by mistake."""
        self.layer_slices: dict[str, slice] = {}
        total = sum(p.size for p in self.params().values())
        self.flat_params = np.empty(total, self.dtype)
        self.flat_grads = None if inference else np.zeros(total, self.dtype)
        no_gradient = np.zeros((), self.dtype)
        offset = 0
        for top in self.layers:
            start = offset
            for layer in walk([top]):  # the same order as params()
                for key, p in layer.params.items():
                    end = offset + p.size
                    view = self.flat_params[offset:end].reshape(p.shape)
                    view[...] = p
                    layer.params[key] = view
                    layer.grads[key] = (np.broadcast_to(no_gradient, p.shape) if inference
                                        else self.flat_grads[offset:end].reshape(p.shape))
                    offset = end
            if offset > start:
                self.layer_slices[top.name] = slice(start, offset)

    @classmethod
    def from_spec(cls, spec: dict[str, Any], seed: int | None = 0, dtype: str | None = None,
                  inference: bool = False) -> Network:
        return cls(spec, seed=seed, dtype=dtype, inference=inference)

    @classmethod
    def from_weights(cls, spec: dict[str, Any], weights: dict[str, np.ndarray], dtype: str | None = None,
                     inference: bool = False) -> Network:
        """The network of `spec` holding `weights`, every one of them (as set_weights with
        strict=True). No initialiser runs, since each value is replaced: an orthogonal 4096 x
        4096 float64 kernel alone takes seconds to draw."""
        token = WEIGHTS_GIVEN.set(True)
        try:
            net = cls(spec, seed=None, dtype=dtype, inference=inference)
        finally:
            WEIGHTS_GIVEN.reset(token)
        net.set_weights(weights)
        return net

    # -- passes ---------------------------------------------------------------------------
    def _set_stochastic(self, on: bool) -> None:
        for layer in walk(self.layers):
            if hasattr(layer, "stochastic"):
                layer.stochastic = on

    def logits(self, x: np.ndarray, training: bool) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def backward(self, dz: np.ndarray, input_gradient: bool = False) -> np.ndarray | None:
        """Backpropagate dL/dz of the last layer into every layer's grads. Training needs no
        dL/dx: then the layers before the first one with weights are skipped, and that one
        leaves out its input-gradient product. `input_gradient=True` returns dL/dx."""
        if input_gradient:
            for layer in reversed(self.layers):
                dz = layer.backward(dz)
            return dz
        first = self._first_weighted
        for layer in reversed(self.layers[first + 1:]):
            dz = layer.backward(dz)
        if first < len(self.layers):
            self.layers[first].backward_params(dz)
        return None

    def as_input(self, x) -> np.ndarray:
        x = narrowed(x, self.dtype, "inputs")
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"inputs must have shape (n, {', '.join(map(str, self.input_shape))}), got {x.shape}")
        return x

    def forward(self, x, batch_size: int = 1024) -> np.ndarray:
        """Inference: running statistics, no dropout, the output activation applied. At most
        `batch_size` rows at a time, fewer when a batch would hold more than INFERENCE_BYTES."""
        x = self.as_input(x)
        batch_size = max(1, min(batch_size, INFERENCE_BYTES // (self.cost()[1] * self.dtype.itemsize)))
        outs = [self.output_activation.forward(self.logits(x[i:i + batch_size], training=False))
                for i in range(0, max(len(x), 1), batch_size)]
        return np.concatenate(outs) if outs else outs

    predict = forward

    def train_step_gradients(self, x: np.ndarray, y: np.ndarray, sample_weight=None) -> float:
        """One forward + backward pass in training mode; gradients land in each layer's grads."""
        z = self.logits(x, training=True)
        loss, dz, self.last_output = self.loss(self.output_activation, z, y, sample_weight)
        self.backward(dz)
        return loss + self._add_penalties()

    def _add_penalties(self) -> float:
        """L1/L2 penalties on kernels: added to the gradients already computed; returns their
        value, which the loss includes."""
        for layer in self._penalized:
            for key in layer.regularized:
                w, g = layer.params[key], layer.grads[key]
                if layer.l2:
                    g += (2 * layer.l2) * w
                if layer.l1:
                    g += layer.l1 * np.sign(w)
        return self.penalty()

    def penalty(self) -> float:
        """The L1/L2 penalties' value: part of the loss, in training and in evaluation alike (as
        in Keras), so that training and validation losses compare like with like."""
        extra = 0.0
        for layer in self._penalized:
            for key in layer.regularized:
                w = layer.params[key]
                if layer.l2:
                    extra += layer.l2 * float(np.sum(w * w))
                if layer.l1:
                    extra += layer.l1 * float(np.sum(np.abs(w)))
        return extra

    def loss_and_gradients(self, x, y, sample_weight=None) -> tuple[float, dict[str, np.ndarray]]:
        """Training-mode loss (dropout off, so deterministic) and dL/dw for every weight."""
        x = self.as_input(x)
        y = self.loss.prepare_targets(y, self.output_shape, self.dtype)
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight, dtype=self.dtype).reshape(-1)
        self._set_stochastic(False)
        try:
            loss = self.train_step_gradients(x, y, sample_weight)
        finally:
            self._set_stochastic(True)
        grads = {k: g.copy() for k, g in self.gradients().items()}
        for k, w in self.buffers().items():
            grads[k] = np.zeros_like(w)
        return loss, grads

    # -- weights ----------------------------------------------------------------------------
    def _named(self, attr: str, layers=None, prefix="") -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for layer in self.layers if layers is None else layers:
            name = f"{prefix}{layer.name}"
            for k, v in getattr(layer, attr).items():
                out[f"{name}/{k}"] = v
            out.update(self._named(attr, layer.sublayers(), f"{name}/"))
        return out

    def params(self) -> dict[str, np.ndarray]:
        """Live trainable arrays (update in place)."""
        return self._named("params")

    def gradients(self) -> dict[str, np.ndarray]:
        return self._named("grads")

    def buffers(self) -> dict[str, np.ndarray]:
        return self._named("buffers")

    def trainable(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.params().items() if k.split("/")[0] not in self.frozen}

    def trainable_runs(self) -> dict[str, slice]:
        """Slices of the flat vectors holding the trainable (not frozen) layers, adjacent layers
        merged: a single run "FIRST..LAST" for the whole network unless a layer inside is frozen."""
        runs: list[list] = []  # [first layer, last layer, start, stop]
        for name, sl in self.layer_slices.items():
            if name in self.frozen:
                continue
            if runs and runs[-1][3] == sl.start:
                runs[-1][1:] = [name, runs[-1][2], sl.stop]
            else:
                runs.append([name, name, sl.start, sl.stop])
        keys: dict[str, slice] = {}
        for a, b, start, stop in runs:
            key = a if a == b else f"{a}..{b}"
            while key in keys:  # a layer may be named "a..b" too: each run needs its own key
                key += "+"
            keys[key] = slice(start, stop)
        return keys

    def get_weights(self) -> dict[str, np.ndarray]:
        """Copies of every array that defines the model: trainable params and buffers."""
        return {k: v.copy() for k, v in {**self.params(), **self.buffers()}.items()}

    def snapshot(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The weights as they are now, as cheaply as they can be kept: one copy of the flat
        parameter vector, and copies of the buffers. `weights_of` names them. (A worker keeps
        one after every epoch: get_weights' dict of copies was a sizeable part of a small
        network's epoch.)"""
        return self.flat_params.copy(), {k: v.copy() for k, v in self.buffers().items()}

    def weights_of(self, snapshot: tuple[np.ndarray, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """A `snapshot` as get_weights would have given it then."""
        flat, buffers = snapshot
        base, size = self.flat_params.ctypes.data, self.flat_params.itemsize
        out = {}
        for name, view in self.params().items():  # each a view into flat_params: its offset there
            start = (view.ctypes.data - base) // size
            out[name] = flat[start:start + view.size].reshape(view.shape).copy()
        return {**out, **buffers}

    def set_weights(self, weights: dict[str, np.ndarray], strict: bool = True) -> None:
        current = {**self.params(), **self.buffers()}
        missing = sorted(set(current) - set(weights))
        unknown = sorted(set(weights) - set(current))
        if strict and (missing or unknown):
            raise ValueError(f"weights do not match the network: missing {missing}, unexpected {unknown}")
        for k, v in weights.items():
            if k not in current:
                continue
            v = np.asarray(v)
            if v.shape != current[k].shape:
                raise ValueError(f"weight {k} has shape {v.shape}, the network needs {current[k].shape}")
            np.copyto(current[k], v, casting="same_kind")

    def adapt(self, x) -> None:
        """A first `normalization` layer takes the mean and variance of `x` (the training inputs).
        Trainer.fit calls this before its first epoch, for a layer that has none yet: weights
        loaded from a trained network (fine-tuning, a checkpoint) keep theirs."""
        first = self.layers[0]
        if isinstance(first, Normalization) and not first.adapted:
            first.adapt(self.as_input(x))

    def freeze(self, layer_names) -> None:
        names = {layer.name for layer in self.layers}
        unknown = sorted(set(layer_names) - names)
        if unknown:
            raise ValueError(f"cannot freeze unknown layers {unknown}; layers are {sorted(names)}")
        self.frozen = set(layer_names)
        for top in self.layers:
            for layer in walk([top]):
                if isinstance(layer, BatchNorm):  # see BatchNorm
                    layer.frozen = top.name in self.frozen

    def layer_norms(self, arrays: dict[str, np.ndarray]) -> dict[str, float]:
        """L2 norm per top-level layer over the given arrays (weights or gradients)."""
        sums: dict[str, float] = {}
        for k, v in arrays.items():
            top = k.split("/")[0]
            sums[top] = sums.get(top, 0.0) + float(np.vdot(v, v))
        return {k: float(np.sqrt(s)) for k, s in sums.items()}

    def summary(self) -> list[dict[str, Any]]:
        return [layer.describe() for layer in self.layers]

    def cost(self) -> tuple[int, int]:
        """(multiply-adds, values held) per training sample (see Layer.cost), counting the input,
        the loss's output and gradient, and the largest layer's temporaries: a job's time and
        memory grow with these."""
        per_layer = [layer.cost() for layer in self.layers]
        held = sum(v for _, v in per_layer) + size_of(self.input_shape) + 2 * size_of(self.output_shape)
        held += max(layer.transient() for layer in walk(self.layers))  # one layer's at a time
        return sum(m for m, _ in per_layer), held

    @property
    def sequential_steps(self) -> int:
        """Steps a batch goes through one after another (Layer.loop_steps)."""
        return sum(layer.loop_steps() for layer in walk(self.layers))

    @property
    def parameter_count(self) -> int:
        return int(sum(v.size for v in self.params().values()))

    @property
    def classification(self) -> bool:
        return self.loss.classification

    @property
    def class_count(self) -> int:
        """Classes a classifier's output tells apart: one per unit, two for one sigmoid unit."""
        units = self.output_shape[-1]
        return 2 if self.spec["loss"] == "binary_crossentropy" and units == 1 else units
