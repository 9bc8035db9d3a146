"""normalization: the inputs standardized with statistics of the training data, kept with the
weights, so that predict takes features as they were given (no scaler to keep beside the model)."""

from __future__ import annotations

import numpy as np

from ..spec import Field
from .base import PerFeatureLayer, register

ADAPT_BLOCK_VALUES = 1 << 22  # rows are read this many values at a time: float64 copies stay small


@register
class Normalization(PerFeatureLayer):
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

    def build(self, input_shape, rng, dtype):
        features = self.feature_axis(input_shape)
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
            with np.errstate(over="ignore"):  # an overflow is named below
                total += (block * block).sum(axis=self.reduce, keepdims=True)
        mean, variance = mean.reshape(-1), (total / count).reshape(-1)
        if not np.isfinite(mean).all():
            raise ValueError(f"{self.name}: the inputs hold a value that is not a finite number")
        big = np.flatnonzero(~(variance <= np.finfo(self.buffers["variance"].dtype).max))
        if len(big):  # stored as inf, its scale would be 0: the feature silently dropped
            dtype = self.buffers["variance"].dtype
            raise ValueError(f"{self.name}: the variance of feature {big[0]} ({variance[big[0]]:.3g}) overflows "
                             f"{dtype}; scale the data{', or use float64' if dtype != np.float64 else ''}")
        self.buffers["mean"][...] = mean
        self.buffers["variance"][...] = variance

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
