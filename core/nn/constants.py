"""Shared, read-only arrays of zeros and of ones, for two NumPy speed-ups:

* `np.maximum(z, zeros(z.shape, z.dtype))` runs NumPy's SIMD loop for two arrays, about 3x
  faster than `np.maximum(z, 0)`, whose scalar operand takes a slow path;
* `ones(n, dtype) @ a` sums the columns of an (n, k) array as one GEMV, 5-20x faster than
  `a.sum(axis=0)` on tall arrays (bias gradients sum over every sample and position).

Each is one cached buffer per dtype, grown on demand and marked read-only. The zeros come from
np.zeros (calloc), so pages that are only ever read cost no memory."""

from __future__ import annotations

import math

import numpy as np

_CACHE: dict[tuple[str, np.dtype], np.ndarray] = {}


def _filled(kind: str, size: int, dtype) -> np.ndarray:
    key = (kind, np.dtype(dtype))
    buf = _CACHE.get(key)
    if buf is None or buf.size < size:
        make = np.zeros if kind == "zeros" else np.ones
        buf = make(max(size, 2 * buf.size if buf is not None else size), dtype=dtype)
        buf.flags.writeable = False
        _CACHE[key] = buf  # arrays handed out earlier keep the old buffer alive; both are read-only
    return buf[:size]


def zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    return _filled("zeros", math.prod(shape), dtype).reshape(shape)


def ones(n: int, dtype) -> np.ndarray:
    return _filled("ones", n, dtype)


def column_sums(a: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out[j] = sum_i a[i, j] for a 2-D array, as the product 1^T a."""
    return np.matmul(ones(a.shape[0], a.dtype), a, out=out)
