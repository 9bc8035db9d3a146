"""Predictions from a stored job: the network is rebuilt once and kept in a cache bounded in
bytes, because a finished job's weights never change."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from flask import current_app
from sqlalchemy import select

from core.db import Dataset, Job
from core.nn import Network
from core.nn.network import walk
from core.store import load_weights

from .auth import current_tenant
from .datasets import as_model_dtype, not_found, numeric_array
from .errors import ApiError, validation_error
from .limits import PredictLimits, TenantSlots, check_predict_size


class CachedModel:
    """A job's network, built for inference, and its dataset's class labels. Inference keeps
    nothing of a batch on the layers, so the web threads share the network and predict at once;
    its size is its weights and never grows."""

    def __init__(self, net: Network, class_labels: list[Any] | None):
        self.net, self.class_labels = net, class_labels
        self.nbytes = footprint(net)

    def predict(self, body: Any, limits: PredictLimits | None = None) -> dict[str, Any]:
        return predict_response(self.net, body, self.class_labels, limits)


def answer(model: CachedModel, body: Any) -> dict[str, Any]:
    """A prediction within the process's bounds: one of its prediction slots, and the request's
    size and compute limits."""
    with prediction_slot(current_app.extensions["backprop"]["predictions"], current_tenant()):
        return model.predict(body, PredictLimits.current())


@contextmanager
def prediction_slot(slots: TenantSlots, tenant: str) -> Iterator[None]:
    """One of the process's prediction slots for this request, or 503 at once: predictions are
    CPU work on web threads, and however each is bounded, many at once would leave no thread to
    answer anything else. A tenant holds at most half of them, so that another's still answer."""
    if not slots.acquire(tenant):
        raise ApiError(503, "too_many_predictions", "this API process is computing as many predictions as it "
                       "may at once, for this tenant or in all; try again in a moment", headers={"Retry-After": "1"})
    try:
        yield
    finally:
        slots.release(tenant)


def footprint(net: Network) -> int:
    """Bytes of every array the network holds: weights, gradients (not in an inference network)
    and what its layers keep of a training batch; a view counts as the array it views, once."""
    arrays = [a for a in (net.flat_params, net.flat_grads) if a is not None]
    for layer in walk(net.layers):
        arrays += [v for v in vars(layer).values() if isinstance(v, np.ndarray)]
        arrays += list(layer.buffers.values())
    bases: dict[int, int] = {}
    for a in arrays:
        while isinstance(a.base, np.ndarray):
            a = a.base
        bases[id(a)] = a.nbytes
    return sum(bases.values())


class ModelCache:
    """Least recently used models, up to `max_bytes` in all (the newest is kept whatever its
    size): a web process must not hold every large network it has ever served."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, CachedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session, job: Job) -> CachedModel:
        with self._lock:
            hit = self._items.get(job.id)
            if hit is not None:
                self._items.move_to_end(job.id)
                return hit
        # The labels before the weights: a delete takes the job, its weights and its inline
        # dataset in one transaction, so weights found after the labels mean the labels were
        # read before it too. The other order could pair the weights with no labels, and cache a
        # model answering class indices.
        dataset = session.execute(select(Dataset.class_labels).where(Dataset.id == job.dataset_id)).first()
        weights = load_weights(session, job.id)
        if dataset is None or not weights:  # deleted since the caller found it
            raise not_found("job", job.id)
        net = Network.from_weights(job.model_spec, weights, inference=True)  # no initialiser runs on a web thread
        model = CachedModel(net, job.class_labels if job.class_labels is not None else dataset.class_labels)
        with self._lock:
            model = self._items.setdefault(job.id, model)  # a concurrent miss may have won
            self._items.move_to_end(job.id)
            total = sum(m.nbytes for m in self._items.values())
            while total > self.max_bytes and len(self._items) > 1:
                _, evicted = self._items.popitem(last=False)
                total -= evicted.nbytes
        return model

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._items


def predict_response(net: Network, body: Any, class_labels: list[Any] | None,
                     limits: PredictLimits | None = None) -> dict[str, Any]:
    """`{"inputs": rows}` or `{"instances": rows}` -> predictions (original labels) and probabilities."""
    if (body.inputs is None) == (body.instances is None):
        raise ApiError(422, "validation_error", "inputs: send exactly one of inputs or instances",
                       errors=[{"path": "inputs", "message": "send exactly one of inputs or instances"}])
    rows, path = (body.inputs, "inputs") if body.inputs is not None else (body.instances, "instances")
    return predict(net, rows, class_labels, path, limits)


def predict(net: Network, rows: Any, class_labels: list[Any] | None, path: str,
            limits: PredictLimits | None = None) -> dict[str, Any]:
    """`limits` are checked from the row count before the rows are read."""
    if isinstance(rows, list) and limits is not None:
        check_predict_size(len(rows), net, path, limits)
    x = numeric_array(rows, path, min_ndim=2)
    if x.shape[1:] != net.input_shape:
        raise validation_error([{"path": path, "message": f"expected rows of shape {list(net.input_shape)}, "
                                                          f"got {list(x.shape[1:])}"}])
    x = as_model_dtype(x, net.dtype, path)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is answered just below
        out = net.forward(x)
    overflowed = np.flatnonzero(~np.isfinite(out.reshape(len(out), -1)).all(axis=1))
    if len(overflowed):  # finite inputs, yet too large for the weights: NaN is no answer (nor JSON)
        raise validation_error([{"path": f"{path}[{overflowed[0]}]", "message":
                                 f"the network's output for this row is not finite: its values overflow "
                                 f"{net.dtype.name} inside the network; scale it as the training data was"}])
    loss = net.spec["loss"]
    if class_labels is not None and len(class_labels) != net.class_count:
        # a job accepted before submission checked this: its units would index past the labels
        raise ApiError(409, "labels_mismatch", f"this job's dataset has {len(class_labels)} class labels for "
                       f"{net.class_count} classes of output; train it again on data with one label per class")
    if loss in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
        idx = out.argmax(axis=-1)
        preds = idx.tolist() if class_labels is None else np.asarray(class_labels, dtype=object)[idx].tolist()
        classes = class_labels if class_labels is not None else list(range(net.class_count))
        return {"predictions": preds, "probabilities": out.tolist(), "classes": classes}
    if loss == "binary_crossentropy":
        labels = (out > 0.5).astype(int)
        if out.shape[1:] == (1,):
            labels, probs = labels[:, 0], out[:, 0]
            if class_labels is not None:
                labels = np.asarray(class_labels, dtype=object)[labels]
            return {"predictions": labels.tolist(), "probabilities": probs.tolist(),
                    "classes": class_labels if class_labels is not None else [0, 1]}
        return {"predictions": labels.tolist(), "probabilities": out.tolist()}
    preds = out[:, 0] if out.shape[1:] == (1,) else out
    return {"predictions": preds.tolist()}
