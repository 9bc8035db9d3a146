"""Arrays to bytes and back without pickle: `.npy` / `.npz` written by NumPy and read with
allow_pickle=False, so an object array can never be smuggled in."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np


def array_to_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def array_from_bytes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def arrays_to_npz(arrays: dict[str, np.ndarray], meta: dict[str, Any] | None = None) -> bytes:
    buf = io.BytesIO()
    payload = dict(arrays)
    if meta is not None:
        payload["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(buf, allow_pickle=False, **payload)
    return buf.getvalue()


def arrays_from_npz(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = arrays.pop("__meta__", None)
    return arrays, (None if meta is None else json.loads(meta.tobytes().decode()))
