"""normalization: the inputs standardized with statistics of the training data, kept with the
weights, so that predict takes features as they were given (no scaler to keep beside the model)."""

from __future__ import annotations

import numpy as np

from ..spec import Field
from .base import Layer, ShapeError, register

ADAPT_BLOCK_VALUES = 1 << 22  # rows are read this many values at a time: float64 copies stay small


@register
class Normalization(Layer):
    """y = (x - mean) / sqrt(variance) per feature along `axis`, the mean and (biased) variance
    taken over every sample and every other axis of the training split when training starts
    (Trainer.fit calls `adapt`, as Keras's Normalization.adapt), then kept as buffers: saved with
    the weights, never trained, left alone by fine-tuning and resuming. A feature whose variance
    is 0 is only centred (its scale taken as 1, as scikit-learn's StandardScaler does). It must
    be the first layer: it adapts to the network's inputs."""

    type_name = "normalization"
    fields = {
        "axis": Field("int", default=-1, description="the feature axis, counting the batch axis as 0 "
                                                     "(-1: the last, as dense features and channels_last images)"),
    }
    doc = ("Standardizes the inputs with the training data's mean and variance per feature (per "
           "channel of images), learned when training starts and kept with the weights: predict "
           "takes raw features. First layer only.")

    @classmethod
    def check_extra(cls, checked, path, errors):
        if checked.get("axis") == 0:
            errors.append({"path": f"{path}.axis", "message": "cannot be the batch axis (0)"})
        return checked

    def build(self, input_shape, rng, dtype):
        ndim = len(input_shape) + 1
        axis = self.config["axis"]
        if not -ndim <= axis < ndim or axis % ndim == 0:
            raise ShapeError(f"axis {axis} is not a feature axis of samples shaped {tuple(input_shape)} "
                             f"(batch axis 0, features 1..{ndim - 1} or negative)")
        self.axis = axis % ndim
        self.reduce = tuple(a for a in range(ndim) if a != self.axis)
        features = input_shape[self.axis - 1]
        self.bshape = tuple(features if a == self.axis else 1 for a in range(ndim))
        self.buffers["mean"] = np.zeros(features, dtype=dtype)
        # -1 until adapted: no variance is negative, and weights loaded from a trained network
        # (fine-tuning, predict) arrive adapted
        self.buffers["variance"] = np.full(features, -1, dtype=dtype)
        return tuple(input_shape)

    @property
    def adapted(self) -> bool:
        return bool((self.buffers["variance"] >= 0).all())

    def adapt(self, x: np.ndarray) -> None:
        """The statistics of `x` (samples first), in float64, a block of samples at a time, the
        variance from the mean (two passes: no cancellation when the mean is large)."""
        if len(x) == 0:
            raise ValueError(f"{self.name}: no samples to take the mean and variance of")
        rows = max(1, ADAPT_BLOCK_VALUES // max(1, int(np.prod(x.shape[1:]))))
        count = len(x) * int(np.prod([x.shape[a] for a in self.reduce[1:]], dtype=np.int64))
        total = np.zeros(self.bshape)
        for start in range(0, len(x), rows):
            total += x[start:start + rows].sum(axis=self.reduce, keepdims=True, dtype=np.float64)
        mean = total / count
        total[...] = 0
        for start in range(0, len(x), rows):
            block = x[start:start + rows].astype(np.float64) - mean
            total += (block * block).sum(axis=self.reduce, keepdims=True)
        self.buffers["mean"][...] = mean.reshape(-1)
        self.buffers["variance"][...] = (total / count).reshape(-1)

    def _scale(self) -> np.ndarray:
        """1 / std per feature, 1 where the variance is 0."""
        if not self.adapted:
            raise ValueError(f"{self.name} has not seen data yet: training adapts it to the training data "
                             "(Trainer.fit), or call Network.adapt(x)")
        std = np.sqrt(self.buffers["variance"])
        return (1 / np.where(std > 0, std, 1)).astype(std.dtype).reshape(self.bshape)

    def forward(self, x, training):
        scale = self._scale()
        if training:
            self._scale_used = scale
        return (x - self.buffers["mean"].reshape(self.bshape)) * scale

    def backward(self, dy):
        return dy * self._scale_used  # the statistics are constants here
