"""Converting a caller's data to the network's dtype."""

from __future__ import annotations

import numpy as np


class BeyondDtype(ValueError):
    """A value the network's dtype cannot hold: cast, it would become infinite."""

    def __init__(self, what: str, index: tuple[int, ...], value: float, dtype: np.dtype):
        self.index, self.value, self.dtype = index, value, dtype
        self.largest = float(np.finfo(dtype).max)
        super().__init__(f"{what} hold values beyond the range of {dtype.name} (largest {self.largest:.3g}), "
                         f"e.g. {value:g} at [{', '.join(map(str, index))}]; scale the data, or use dtype float64")


def narrowed(a, dtype, what: str) -> np.ndarray:
    """`a` as `dtype`. A float64 value beyond float32's range would silently become infinite and
    show up epochs later as a diverged loss: BeyondDtype names it now instead."""
    a = np.asarray(a)
    with np.errstate(over="ignore"):  # overflow is what the check below reports
        out = a.astype(dtype, copy=False)
    if a.dtype.kind == "f" and out.dtype.kind == "f" and out.dtype.itemsize < a.dtype.itemsize:
        bad = np.argwhere(np.isinf(out) & ~np.isinf(a))
        if len(bad):
            index = tuple(int(i) for i in bad[0])
            raise BeyondDtype(what, index, float(a[index]), out.dtype)
    return out
