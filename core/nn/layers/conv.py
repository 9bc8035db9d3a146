"""2-D convolution, max/average pooling and flatten over image batches.

Images are (height, width, channels) per sample by default ("channels_last", as Keras);
"channels_first" takes (channels, height, width) as PyTorch. Internally everything runs
channels_last, so that the channel axis is the contiguous one that the GEMM contracts over;
channels_first inputs are transposed once on the way in and once on the way out.

Padding follows TensorFlow: "valid" uses only full windows; "same" gives ceil(size / stride)
outputs, padding (total // 2) before and the rest after."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..spec import REQUIRED, Field
from .base import (
    ACTIVATION_FIELD,
    INITIALIZER_CHOICES,
    REGULARIZER_FIELDS,
    ActivatedLayer,
    Layer,
    ShapeError,
    register,
    size_of,
)


class PairField(Field):
    """A positive int, or [height, width]; one int means the same value on both axes."""

    def check(self, value, path, errors):
        if value is None and self.nullable:
            return None

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool) and v >= 1

        if is_int(value) or (isinstance(value, list) and len(value) == 2 and all(map(is_int, value))):
            return value
        errors.append({"path": path, "message": "must be a positive integer or a list [height, width] "
                                                "of two positive integers"})
        return None

    def json_schema(self):
        pos = {"type": "integer", "minimum": 1}
        options = [pos, {"type": "array", "items": pos, "minItems": 2, "maxItems": 2}]
        if self.nullable:
            options.append({"type": "null"})
        schema: dict = {"anyOf": options}
        if self.default is not REQUIRED and self.default is not None:
            schema["default"] = self.default
        if self.description:
            schema["description"] = self.description
        return schema


def pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


PADDING_FIELD = Field("choice", default="valid", choices=("valid", "same"),
                      description="valid: full windows only; same: ceil(size / stride) outputs")
DATA_FORMAT_FIELD = Field("choice", default="channels_last", choices=("channels_last", "channels_first"),
                          description="channels_last: (height, width, channels); "
                                      "channels_first: (channels, height, width)")


def out_size(size: int, k: int, s: int, padding: str, what: str) -> tuple[int, tuple[int, int]]:
    """Output length along one axis and the (before, after) padding, TensorFlow's rule."""
    if padding == "same":
        out = -(-size // s)
        total = max((out - 1) * s + k - size, 0)
        return out, (total // 2, total - total // 2)
    if size < k:
        raise ShapeError(f"the {what} {k} is larger than the input ({size}) with padding 'valid'; "
                         "use padding 'same' or a smaller window")
    return (size - k) // s + 1, (0, 0)


def whole_pixels(a: np.ndarray) -> np.ndarray:
    """A (..., c) array with contiguous channels viewed as (...) elements of c values each, for
    copies between strided pixel grids: NumPy then moves a whole pixel per step instead of one
    value (about 2x faster for 16 channels)."""
    return a.view(np.dtype((np.void, a.shape[-1] * a.itemsize)))[..., 0]


class Spatial2D(Layer):
    """Shared shape logic for layers that slide a (kh, kw) window with strides over images."""

    window_name = "kernel"

    def spatial_build(self, input_shape, window, strides) -> tuple[int, int, int]:
        """Set the geometry; returns (out_h, out_w, in_channels)."""
        if len(input_shape) != 3:
            layout = "(height, width, channels)" if self.channels_last else "(channels, height, width)"
            raise ShapeError(f"needs 3-D samples {layout}, got {tuple(input_shape)}; "
                             "reshape the input or add a layer that produces images")
        if self.channels_last:
            h, w, c = input_shape
        else:
            c, h, w = input_shape
        self.window, self.strides = pair(window), pair(strides)
        (kh, kw), (sh, sw) = self.window, self.strides
        self.out_h, self.pad_h = out_size(h, kh, sh, self.config["padding"], f"{self.window_name} height")
        self.out_w, self.pad_w = out_size(w, kw, sw, self.config["padding"], f"{self.window_name} width")
        self.in_hw = (h, w)
        return self.out_h, self.out_w, c

    def loop_steps(self) -> int:
        return self.window[0] * self.window[1]  # forward and backward loop over window offsets

    @property
    def channels_last(self) -> bool:
        return self.config.get("data_format", "channels_last") == "channels_last"

    def image_shape(self, h, w, c) -> tuple[int, int, int]:
        return (h, w, c) if self.channels_last else (c, h, w)

    def to_last(self, x: np.ndarray) -> np.ndarray:
        return x if self.channels_last else np.ascontiguousarray(x.transpose(0, 2, 3, 1))

    def from_last(self, x: np.ndarray) -> np.ndarray:
        return x if self.channels_last else np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    @property
    def padded(self) -> bool:
        return any(self.pad_h) or any(self.pad_w)

    def pad(self, x: np.ndarray, value: float = 0.0) -> np.ndarray:
        if not self.padded:
            return x
        return np.pad(x, ((0, 0), self.pad_h, self.pad_w, (0, 0)), constant_values=value)

    def crop(self, dxp: np.ndarray) -> np.ndarray:
        if not self.padded:
            return dxp
        h, w = self.in_hw
        return dxp[:, self.pad_h[0]:self.pad_h[0] + h, self.pad_w[0]:self.pad_w[0] + w, :]

    def window_slices(self, out_h: int | None = None, out_w: int | None = None):
        """(i, j, index) for each offset in the window: index picks, from the padded input, the
        input element at that offset for every output position (the first out_h x out_w
        positions, when given)."""
        (kh, kw), (sh, sw) = self.window, self.strides
        out_h, out_w = out_h or self.out_h, out_w or self.out_w
        for i in range(kh):
            for j in range(kw):
                yield i, j, (slice(None), slice(i, i + sh * (out_h - 1) + 1, sh),
                             slice(j, j + sw * (out_w - 1) + 1, sw), slice(None))


@register
class Conv2D(Spatial2D, ActivatedLayer):
    """2-D convolution (cross-correlation, as every framework) as im2col + one matrix product.

    The kernel is stored (kh, kw, in_channels, filters) as Keras; `kernel_size` and `strides`
    take an int or [height, width]."""

    type_name = "conv2d"
    doc = ("2-D convolution over (height, width, channels) images, or (channels, height, width) "
           "with data_format channels_first; kernel_size and strides take an int or [height, width].")
    regularized = ("kernel",)
    fields = {
        "filters": Field("int", minimum=1, description="output channels"),
        "kernel_size": PairField("int_or_pair", description="an int or [height, width]"),
        "strides": PairField("int_or_pair", default=1, description="an int or [height, width]"),
        "padding": PADDING_FIELD,
        "data_format": DATA_FORMAT_FIELD,
        "activation": ACTIVATION_FIELD,
        "use_bias": Field("bool", default=True),
        # He init suits the ReLU that almost every conv layer uses (PyTorch's kaiming family)
        "kernel_initializer": Field("choice", default="he_uniform", choices=INITIALIZER_CHOICES),
        "bias_initializer": Field("choice", default="zeros", choices=INITIALIZER_CHOICES),
        **REGULARIZER_FIELDS,
    }

    # (kp, kq) when the network hands this layer's output straight to a pool whose (kp, kq)
    # windows tile it (Network._hand_convs_to_pools): the output rows then come grouped by
    # window offset, and forward returns the pool's stack (Pool2D.stack) instead of an image
    pool_tile: tuple[int, int] | None = None

    def build(self, input_shape, rng, dtype):
        oh, ow, c = self.spatial_build(input_shape, self.config["kernel_size"], self.config["strides"])
        (kh, kw), f = self.window, self.config["filters"]
        self.init_param("kernel", self.config["kernel_initializer"], (kh, kw, c, f),
                        kh * kw * c, kh * kw * f, rng, dtype)
        if self.config["use_bias"]:
            self.init_param("bias", self.config["bias_initializer"], (f,), kh * kw * c, kh * kw * f, rng, dtype)
        return self.image_shape(oh, ow, f)

    def cost(self):
        (kh, kw), positions = self.window, self.out_h * self.out_w
        k = kh * kw * self.params["kernel"].shape[2]
        # im2col's patches (kept for backward, and their gradient) outweigh most outputs
        return positions * self.params["kernel"].size, 2 * positions * (k + 1) + 2 * size_of(self.output_shape)

    def forward(self, x, training):
        xp = self.pad(self.to_last(x))
        cols = self.im2col(xp)
        if training:
            self._cols, self._padded_shape = cols, xp.shape
        z = cols @ self._stacked_weights()
        if self.pool_tile:  # the pool's stack: (window offset, n, ph, pw, filters)
            kp, kq, n, ph, pw = self._row_order(len(xp))
            return self.activate(z.reshape(kp * kq, n, ph, pw, z.shape[1]), training)
        # the filter count spelled out: with no rows, -1 could be any number
        return self.from_last(self.activate(z.reshape(len(xp), self.out_h, self.out_w, z.shape[1]), training))

    def _row_order(self, n: int) -> tuple[int, int, int, int, int]:
        """The axes of im2col's rows, outermost first: (kp, kq, n, ph, pw) is output pixel
        (n, a * kp + p, b * kq + q) at (p, q, n, a, b). Without a pool tile, (1, 1, n, out_h,
        out_w): the image's own order. With one, pixels no pool window reads are left out."""
        kp, kq = self.pool_tile or (1, 1)
        return kp, kq, n, self.out_h // kp, self.out_w // kq

    def _stacked_weights(self) -> np.ndarray:
        """The kernel as (kh*kw*c, filters), with the bias as one more row: cols ends in a
        column of ones, so the GEMM adds the bias and backward's GEMM gives its gradient."""
        kernel = self.params["kernel"]
        w = kernel.reshape(-1, kernel.shape[-1])
        return np.concatenate([w, self.params["bias"][None]]) if "bias" in self.params else w

    def im2col(self, xp: np.ndarray) -> np.ndarray:
        """Every (kh, kw, c) patch of the padded input as one row of an (n*oh*ow, kh*kw*c)
        matrix, so that the convolution is one GEMM: cols @ W; with a bias, each row ends in a
        1 (see _stacked_weights). The rows come in _row_order: the image's order, or grouped by
        the window offset of the pool this layer hands its output to.

        Built row by row, the copy moves c values at a time, which is slow for few channels (an
        image's first layer); then the matrix is built column by column instead, one strided
        slice per window offset and channel, and returned transposed: the same matrix."""
        (kh, kw), (sh, sw) = self.window, self.strides
        c = xp.shape[-1]
        kp, kq, n, ph, pw = order = self._row_order(len(xp))
        k, ones = kh * kw * c, int("bias" in self.params)
        if c >= 4:
            win = sliding_window_view(xp, (kh, kw), axis=(1, 2))[:, ::sh, ::sw][:, :ph * kp, :pw * kq]
            cols = np.empty((*order, k + ones), xp.dtype)
            np.copyto(cols[..., :k].reshape(*order, kh, kw, c),
                      win.reshape(n, ph, kp, pw, kq, c, kh, kw).transpose(2, 4, 0, 1, 3, 6, 7, 5))
            cols[..., k:] = 1
            return cols.reshape(-1, k + ones)
        cols_t = np.empty((k + ones, *order), xp.dtype)
        patches = cols_t[:k].reshape(kh, kw, c, *order)
        for i, j, index in self.window_slices():
            at_offset = xp[index][:, :ph * kp, :pw * kq]  # the input pixel each output pixel sees at (i, j)
            patches[i, j] = at_offset.reshape(n, ph, kp, pw, kq, c).transpose(5, 2, 4, 0, 1, 3)
        cols_t[k:] = 1
        return cols_t.reshape(k + ones, -1).T

    def backward_params(self, dy):
        self._weight_grads(dy)

    def _weight_grads(self, dy):
        """dL/dW = cols^T dz, whose last row is dL/db (the column sums of dz) when cols ends in
        ones; returns dz, one row per output pixel in im2col's row order."""
        f = self.params["kernel"].shape[-1]
        dy = dy if self.pool_tile else self.to_last(dy)  # the pool's stack needs no transpose
        dz2 = self.activation_backward(dy).reshape(-1, f)
        if "bias" in self.params:
            g = self._cols.T @ dz2
            self.grads["kernel"].reshape(-1, f)[...] = g[:-1]
            self.grads["bias"][...] = g[-1]
        else:
            np.matmul(self._cols.T, dz2, out=self.grads["kernel"].reshape(-1, f))
        return dz2

    def backward(self, dy):
        kernel = self.params["kernel"]
        c = kernel.shape[2]
        dz2 = self._weight_grads(dy)
        kp, kq, n, ph, pw = order = self._row_order(self._padded_shape[0])
        oh, ow = ph * kp, pw * kq  # the output pixels computed: all, or those a pool window reads
        if self.pool_tile:  # the rows back in the image's order
            dz = np.empty((n, oh, ow, dz2.shape[-1]), dz2.dtype)
            whole_pixels(dz).reshape(n, ph, kp, pw, kq)[...] = \
                whole_pixels(dz2.reshape(*order, -1)).transpose(2, 3, 0, 4, 1)
            dz2 = dz.reshape(-1, dz.shape[-1])
        # dL/dcols = dz W^T, taken one window offset (i, j) at a time: dz W[i, j]^T is the
        # gradient of the input pixels that offset saw, added back where they came from (col2im)
        dxp = np.zeros(self._padded_shape, dtype=dz2.dtype)
        part = np.empty((len(dz2), c), dz2.dtype)
        for i, j, index in self.window_slices(oh, ow):
            np.matmul(dz2, kernel[i, j].T, out=part)
            dxp[index] += part.reshape(n, oh, ow, c)
        return self.from_last(self.crop(dxp))


class Pool2D(Spatial2D):
    window_name = "pool size"
    fields = {
        "pool_size": PairField("int_or_pair", default=2, description="an int or [height, width]"),
        "strides": PairField("int_or_pair", default=None, nullable=True,
                             description="an int or [height, width]; defaults to pool_size"),
        "padding": PADDING_FIELD,
        "data_format": DATA_FORMAT_FIELD,
    }
    # True when the conv before this layer hands over its output as the stack itself
    # (Conv2D.pool_tile): forward then starts from it, and backward returns the stack's gradient
    takes_stack = False

    def build(self, input_shape, rng, dtype):
        size = self.config["pool_size"]
        strides = self.config["strides"] if self.config["strides"] is not None else size
        oh, ow, c = self.spatial_build(input_shape, size, strides)
        return self.image_shape(oh, ow, c)

    def cost(self):
        (kh, kw), out = self.window, size_of(self.output_shape)
        h, w = self.in_hw
        c = size_of(self.input_shape) // (h * w)
        padded = (h + sum(self.pad_h)) * (w + sum(self.pad_w)) * c  # the image windows read from
        # kept for backward: the stack of every window's pixels, or the padded image itself
        held = padded if self.overlapping else kh * kw * out + (padded if self.padded else 0)
        return out * kh * kw, held + 2 * out

    @property
    def overlapping(self) -> bool:
        """Windows share pixels (a stride smaller than the window): then a stack would hold a
        pixel once per window that reads it, and its gradients from those windows add."""
        (kh, kw), (sh, sw) = self.window, self.strides
        return sh < kh or sw < kw

    def stack(self, x, pad_value: float, training: bool) -> np.ndarray:
        """Non-overlapping windows: every window's pixel at each window offset, gathered into
        one contiguous block (offsets, n, out_h, out_w, c), or the stack the conv before handed
        over. Pooling and its gradient then run on contiguous arrays; a strided pass over a
        channels_last image moves only c values per step, several times slower."""
        if self.takes_stack:
            return x
        xp = np.ascontiguousarray(self.pad(self.to_last(x), pad_value))
        kh, kw = self.window
        stack = np.empty((kh * kw, len(xp), self.out_h, self.out_w, xp.shape[-1]), xp.dtype)
        pixels_in, pixels_out = whole_pixels(xp), whole_pixels(stack)
        for k, (_, _, index) in enumerate(self.window_slices()):
            pixels_out[k] = pixels_in[index[:3]]
        if training:
            self._padded_shape = xp.shape
        return stack

    def unstack(self, grads: np.ndarray) -> np.ndarray:
        """dL/dx from the stack's gradient: each offset's block back to the pixels it was
        gathered from (the conv before takes the stack's gradient as it is when it handed the
        stack over)."""
        if self.takes_stack:
            return grads
        (kh, kw), (sh, sw) = self.window, self.strides
        hp, wp = self._padded_shape[1:3]
        # windows that tile the image exactly write every pixel of dx once: no zeroing needed
        tiled = kh == sh and kw == sw and self.out_h * sh == hp and self.out_w * sw == wp
        dxp = (np.empty if tiled else np.zeros)(self._padded_shape, dtype=grads.dtype)
        pixels_in, pixels_out = whole_pixels(grads), whole_pixels(dxp)
        for k, (_, _, index) in enumerate(self.window_slices()):
            pixels_out[index[:3]] = pixels_in[k]
        return self.from_last(self.crop(dxp))


@register
class MaxPool2D(Pool2D):
    """Max over each window; the gradient goes to the window's first maximum (one winner)."""

    type_name = "max_pool2d"
    doc = "Max over each pool window; the gradient goes to one maximum per window."

    # the previous layer's activation when the network moved it here, to run on the pooled
    # array (Network._activate_after_pooling); None otherwise
    activation = None

    def forward(self, x, training):
        if self.overlapping:
            return self._forward_overlapping(x, training)
        stack = self.stack(x, -np.inf, training)  # padding never wins a max
        out = np.maximum(stack[0], stack[1]) if len(stack) > 1 else stack[0].copy()
        for k in range(2, len(stack)):
            np.maximum(out, stack[k], out=out)
        if training:
            self._stack = stack
        return self._activate(out, training)

    def _forward_overlapping(self, x, training):
        """The maximum over window offsets, one strided slice (every window's pixel at that
        offset) at a time."""
        xp = self.pad(self.to_last(x), -np.inf)
        offsets = [index for _, _, index in self.window_slices()]
        out = xp[offsets[0]].copy()
        for index in offsets[1:]:
            np.maximum(out, xp[index], out=out)
        if training:
            self._xp = xp
        return self._activate(out, training)

    def _activate(self, out, training):
        a = out if self.activation is None else self.activation.forward(out)
        if training:
            self._out, self._a = out, a
        return self.from_last(a)

    def backward(self, dy):
        dy = self.to_last(dy)
        out = self._out
        if self.activation is not None:
            dy = self.activation.backward(out, self._a, dy)
        if self.overlapping:
            return self._backward_overlapping(dy)
        return self.unstack(self._stack_gradients(dy))

    def _stack_gradients(self, dy):
        """dL/d(stack): dy at each window's first maximum, in offset order (the strided path's
        order, so the same pixel wins), zero elsewhere."""
        stack, out = self._stack, self._out
        grads = np.empty(stack.shape, dy.dtype)
        taken = None  # windows whose maximum an earlier offset holds
        for k in range(len(stack)):
            win = stack[k] == out
            if taken is None:
                taken = win
            else:
                np.greater(win, taken, out=win)  # a maximum here and none earlier: win & ~taken
                if k < len(stack) - 1:
                    taken |= win
            np.multiply(dy, win, out=grads[k])
        return grads

    def _backward_overlapping(self, dy):
        xp, out = self._xp, self._out
        dxp = np.zeros(xp.shape, dtype=dy.dtype)
        pending = np.ones(out.shape, bool)  # windows whose maximum is still to be found
        for _, _, index in self.window_slices():
            win = xp[index] == out  # this offset holds its window's maximum...
            win &= pending  # ...and is the first offset that does: one winner per window
            pending ^= win
            dxp[index] += dy * win  # a pixel can win in two windows: add, not assign
        return self.from_last(self.crop(dxp))


@register
class AvgPool2D(Pool2D):
    """Mean over each window. With padding 'same' the mean is over the real pixels only
    (TensorFlow's rule; PyTorch's count_include_pad=False)."""

    type_name = "avg_pool2d"
    doc = "Mean over each pool window; with padding 'same', over the real pixels only."

    def build(self, input_shape, rng, dtype):
        shape = super().build(input_shape, rng, dtype)
        # how many real pixels each window covers: along each axis, the overlap of the window
        # with the unpadded image; a window's count is the product of the two
        per_axis = []
        for size, k, s, (before, _), out in zip(self.in_hw, self.window, self.strides, (self.pad_h, self.pad_w),
                                                (self.out_h, self.out_w), strict=True):
            start = np.arange(out) * s - before
            per_axis.append(np.minimum(start + k, size) - np.maximum(start, 0))
        counts = np.multiply.outer(*per_axis)[..., None]
        self._inv_count = (1 / counts).astype(dtype)  # (out_h, out_w, 1)
        return shape

    def forward(self, x, training):
        if self.overlapping:
            xp = self.pad(self.to_last(x))
            if training:
                self._padded_shape = xp.shape
            total = np.zeros((len(xp), self.out_h, self.out_w, xp.shape[-1]), dtype=xp.dtype)
            for _, _, index in self.window_slices():
                total += xp[index]
        else:
            total = self.stack(x, 0.0, training).sum(axis=0)  # padding adds nothing
        return self.from_last(total * self._inv_count.astype(total.dtype, copy=False))

    def backward(self, dy):
        g = self.to_last(dy) * self._inv_count.astype(dy.dtype, copy=False)
        if not self.overlapping:  # every pixel of a window gets its share
            return self.unstack(np.broadcast_to(g, (self.window[0] * self.window[1], *g.shape)))
        dxp = np.zeros(self._padded_shape, dtype=g.dtype)
        for _, _, index in self.window_slices():
            dxp[index] += g
        return self.from_last(self.crop(dxp))


@register
class Flatten(Layer):
    """Collapses each sample to a vector (in memory order), to go from conv layers to dense."""

    type_name = "flatten"
    fields = {}

    def build(self, input_shape, rng, dtype):
        return (int(np.prod(input_shape)),)

    def forward(self, x, training):
        if training:
            self._shape = x.shape
        return x.reshape(len(x), self.output_shape[0])  # not -1: that cannot size 0 rows

    def backward(self, dy):
        return dy.reshape(self._shape)
