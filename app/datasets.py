"""Turning JSON data into arrays, with errors that name the row and column at fault."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ApiError, validation_error


def _find_bad_cell(value: list, path: str) -> dict[str, str]:
    """Walk nested lists to the first ragged row or non-numeric cell; slow, only on errors."""
    def shape_of(v):
        return (len(v),) + shape_of(v[0]) if isinstance(v, list) and v else ()

    expected = shape_of(value)

    def walk(v, depth, p):
        if depth == len(expected):
            if isinstance(v, bool) or not isinstance(v, int | float):
                return {"path": p, "message": f"must be a number, got {type(v).__name__} {v!r:.40}"}
            return None
        if not isinstance(v, list) or len(v) != expected[depth]:
            got = f"{len(v)} values" if isinstance(v, list) else type(v).__name__
            return {"path": p, "message": f"ragged data: expected {expected[depth]} values, got {got}"}
        for i, item in enumerate(v):
            err = walk(item, depth + 1, f"{p}[{i}]")
            if err:
                return err
        return None

    return walk(value, 0, path) or {"path": path, "message": "must be a nested list of numbers"}


def numeric_array(value: Any, path: str, min_ndim: int = 1) -> np.ndarray:
    """A rectangular float64 array from nested JSON lists; 422 naming the offending cell."""
    if not isinstance(value, list) or not value:
        raise validation_error([{"path": path, "message": "must be a non-empty list"}])
    try:
        arr = np.array(value)
    except ValueError:  # inhomogeneous shape
        raise validation_error([_find_bad_cell(value, path)]) from None
    if arr.dtype.kind not in "iuf" or arr.ndim < min_ndim:
        raise validation_error([_find_bad_cell(value, path)])
    arr = arr.astype(np.float64, copy=False)
    bad = np.argwhere(~np.isfinite(arr))
    if len(bad):
        where = "".join(f"[{i}]" for i in bad[0])
        raise validation_error([{"path": f"{path}{where}", "message": "must be a finite number"}])
    return arr


def parse_targets(value: Any, path: str) -> tuple[np.ndarray, list[Any] | None]:
    """Targets as numbers, or as class labels (strings) mapped to indices in sorted order."""
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        labels = sorted(set(value))
        index = {label: i for i, label in enumerate(labels)}
        return np.array([index[v] for v in value], dtype=np.int64), labels
    if isinstance(value, list) and any(isinstance(v, str) for v in value):
        i = next(i for i, v in enumerate(value) if not isinstance(v, str))
        raise validation_error([{"path": f"{path}[{i}]",
                                 "message": "mixes class labels (strings) with other values"}])
    arr = numeric_array(value, path)
    if np.all(np.mod(arr, 1) == 0) and arr.ndim == 1:
        return arr.astype(np.int64), None
    return arr, None


def check_dataset_fits(features: np.ndarray, targets: np.ndarray, input_shape: tuple[int, ...],
                       prefix: str = "dataset") -> None:
    if len(features) != len(targets):
        raise validation_error([{"path": f"{prefix}.targets",
                                 "message": f"has {len(targets)} values but features has {len(features)} rows"}])
    if features.shape[1:] != tuple(input_shape):
        raise validation_error([{
            "path": f"{prefix}.features",
            "message": f"each sample must have shape {list(input_shape)} (model.input_shape), "
                       f"got {list(features.shape[1:])}"}])


def not_found(kind: str, ident: str) -> ApiError:
    return ApiError(404, f"{kind}_not_found", f"no {kind} with id {ident!r}")


def dataset_summary_fields(targets: np.ndarray, labels: list[Any] | None, classification: bool) -> dict[str, Any]:
    """What GET /v1/datasets shows about the targets: classes with their counts, or continuous."""
    if not classification and labels is None:
        return {"target_kind": "continuous", "class_counts": None}
    idx = targets if targets.ndim == 1 else targets.reshape(len(targets), -1).argmax(axis=1)
    values, counts = np.unique(idx, return_counts=True)
    names = [str(labels[int(v)]) if labels is not None else str(int(v)) for v in values]
    return {"target_kind": "classes", "class_counts": dict(zip(names, counts.tolist(), strict=True))}
