"""Predictions from a stored job: the network is rebuilt once and kept in a bounded LRU cache,
because a succeeded job's weights never change."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np
from sqlalchemy import select

from core.db import Dataset, Job
from core.nn import Network
from core.store import load_weights

from .datasets import numeric_array
from .errors import ApiError


class ModelCache:
    def __init__(self, size: int = 16):
        self.size = size
        self._items: OrderedDict[str, tuple[Network, list[Any] | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session, job: Job) -> tuple[Network, list[Any] | None]:
        """The job's network with its weights, and the dataset's original class labels."""
        with self._lock:
            hit = self._items.get(job.id)
            if hit is not None:
                self._items.move_to_end(job.id)
                return hit
        net = Network.from_spec(job.model_spec, seed=0)
        net.set_weights(load_weights(session, job.id))
        labels = session.scalar(select(Dataset.class_labels).where(Dataset.id == job.dataset_id))
        with self._lock:
            self._items[job.id] = hit = (net, labels)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return hit


models = ModelCache()


def predict_response(net: Network, body: Any, class_labels: list[Any] | None) -> dict[str, Any]:
    """`{"inputs": rows}` or `{"instances": rows}` -> predictions (original labels) and probabilities."""
    if (body.inputs is None) == (body.instances is None):
        raise ApiError(422, "validation_error", "inputs: send exactly one of inputs or instances",
                       errors=[{"path": "inputs", "message": "send exactly one of inputs or instances"}])
    rows, path = (body.inputs, "inputs") if body.inputs is not None else (body.instances, "instances")
    return predict(net, rows, class_labels, path)


def predict(net: Network, rows: Any, class_labels: list[Any] | None, path: str) -> dict[str, Any]:
    x = numeric_array(rows, path, min_ndim=2)
    if x.shape[1:] != net.input_shape:
        raise ApiError(422, "validation_error",
                       f"{path}: expected rows of shape {list(net.input_shape)}, got {list(x.shape[1:])}",
                       errors=[{"path": path, "message": f"expected shape (n, {', '.join(map(str, net.input_shape))}),"
                                                         f" got {tuple(x.shape)}"}])
    out = net.forward(x)
    loss = net.spec["loss"]
    if loss in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
        idx = out.argmax(axis=-1)
        preds = idx.tolist() if class_labels is None else np.asarray(class_labels, dtype=object)[idx].tolist()
        return {"predictions": preds, "probabilities": out.tolist()}
    if loss == "binary_crossentropy":
        labels = (out > 0.5).astype(int)
        if out.shape[1:] == (1,):
            labels, probs = labels[:, 0], out[:, 0]
            if class_labels is not None:
                labels = np.asarray(class_labels, dtype=object)[labels]
            return {"predictions": labels.tolist(), "probabilities": probs.tolist()}
        return {"predictions": labels.tolist(), "probabilities": out.tolist()}
    preds = out[:, 0] if out.shape[1:] == (1,) else out
    return {"predictions": preds.tolist()}
