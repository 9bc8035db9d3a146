"""Arrays to bytes and back without pickle: NumPy's `.npy` / `.npz` formats, written and read
with allow_pickle=False, so an object array can never be smuggled in."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np

META = "__meta__"


def array_to_bytes(a: np.ndarray) -> bytes:
    a = np.asarray(a)
    if not a.flags.c_contiguous:  # always C order; np.ascontiguousarray would make 0-d 1-d
        a = a.copy(order="C")
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def array_from_bytes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def arrays_to_npz(arrays: dict[str, np.ndarray], meta: dict[str, Any] | None = None) -> bytes:
    """An .npz that np.load reads. Written member by member rather than with np.savez, whose
    keyword arguments would clash with arrays named 'file' or 'allow_pickle'; fixed member
    timestamps also make equal inputs give equal bytes."""
    if META in arrays:
        raise ValueError(f"{META!r} is reserved for the metadata")
    payload = dict(arrays)
    if meta is not None:
        payload[META] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, a in payload.items():
            zf.writestr(zipfile.ZipInfo(f"{name}.npy"), array_to_bytes(a))
    return buf.getvalue()


def arrays_from_npz(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
    loaded = np.load(io.BytesIO(data), allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError("not an .npz archive")
    with loaded as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = arrays.pop(META, None)
    return arrays, (None if meta is None else json.loads(meta.tobytes().decode()))
