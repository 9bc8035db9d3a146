"""Reading and writing what the API and the workers share: datasets, weights, epochs.
Functions take the session first and never commit: the caller owns the transaction."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from .db import Checkpoint, Dataset, EpochRecord, Job, JobStatus, WeightArray
from .db.models import utcnow
from .nn.network import Network
from .nn.serialization import arrays_from_npz
from .nn.training import weights_in_state

# only plain numeric dtypes ever go into or come out of the database
ARRAY_DTYPES = {"float32", "float64", "int64", "int32", "uint8", "bool"}


def pack(a: np.ndarray) -> tuple[str, list[int], bytes]:
    a = np.ascontiguousarray(a)
    if a.dtype.name not in ARRAY_DTYPES:
        raise ValueError(f"refusing to store an array of dtype {a.dtype}")
    return a.dtype.name, list(a.shape), a.tobytes()


def unpack(dtype: str, shape: list[int], data: bytes) -> np.ndarray:
    if dtype not in ARRAY_DTYPES:
        raise ValueError(f"refusing to load an array of dtype {dtype}")
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape).copy()


def create_dataset(session: Session, features: np.ndarray, targets: np.ndarray,
                   feature_names: list[str] | None = None,
                   class_labels: list[Any] | None = None, **columns: Any) -> Dataset:
    """Store arrays as raw bytes; `columns` sets the descriptive ones (tenant, name, source, ...)."""
    fdt, fshape, fbytes = pack(features)
    tdt, tshape, tbytes = pack(targets)
    digest = hashlib.sha256()
    for part in (fdt, str(fshape), tdt, str(tshape)):
        digest.update(part.encode())
    digest.update(fbytes)
    digest.update(tbytes)
    if class_labels is not None:  # what the target indices stand for: ["cat", "dog"] is not ["dog", "wolf"]
        digest.update(json.dumps(class_labels).encode())
    ds = Dataset(**columns, n_samples=fshape[0], feature_shape=fshape[1:], feature_dtype=fdt, features=fbytes,
                 target_shape=tshape[1:], target_dtype=tdt, targets=tbytes,
                 feature_names=feature_names, class_labels=class_labels, checksum=digest.hexdigest())
    session.add(ds)
    session.flush()
    return ds


def dataset_arrays(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    x = unpack(ds.feature_dtype, [ds.n_samples, *ds.feature_shape], ds.features)
    y = unpack(ds.target_dtype, [ds.n_samples, *ds.target_shape], ds.targets)
    return x, y


# What a job's rows take at most in the database, beyond their arrays' bytes (job_storage_bytes):
JOB_ROW_BYTES = 2048  # the job row, beside its specs' JSON
WEIGHT_ROW_BYTES = 160  # a weight array's row, beside its name and data
EPOCH_ROW_BYTES = 512  # an epoch row: loss, lr, duration, the metrics as JSON, index entries
NORM_ENTRY_BYTES = 32  # per layer, in each of an epoch's two norm maps, beside its name: a float as text


def job_storage_bytes(net: Network, training_spec: dict[str, Any]) -> int:
    """What a job of `net` (shapes only will do) stores at most: its row, its weights (trainable
    ones and buffers, in the model's dtype) and an epoch row per epoch, names counted as JSON
    text (a non-ASCII letter is a 6-byte escape). A bound taken from the spec at submission, so
    that a 35 KB body (one sample, one epoch, ten million float64 weights: 80 MB) counts in full."""
    arrays = {**net.params(), **net.buffers()}
    weights = sum(a.size * net.dtype.itemsize + WEIGHT_ROW_BYTES + len(json.dumps(name)) for name, a in arrays.items())
    per_epoch = EPOCH_ROW_BYTES + 2 * sum(len(json.dumps(layer.name)) + NORM_ENTRY_BYTES for layer in net.layers)
    specs = len(json.dumps(net.spec)) + len(json.dumps(training_spec))
    return int(JOB_ROW_BYTES + specs + weights + training_spec["epochs"] * per_epoch)


def output_classes(targets: np.ndarray, dataset_labels: list[Any], output_labels: list[Any]) -> np.ndarray:
    """A dataset's class indices (into its own sorted labels) as indices into `output_labels`,
    which hold them all: the data of a fine-tune on some of its parent's classes, for the
    parent's output units."""
    unit = {label: i for i, label in enumerate(output_labels)}
    return np.asarray([unit[label] for label in dataset_labels], dtype=targets.dtype)[targets]


def dataset_targets(session: Session, dataset_id: str) -> np.ndarray:
    """Only the targets of a dataset, without loading its features."""
    row = session.execute(select(Dataset.n_samples, Dataset.target_shape, Dataset.target_dtype, Dataset.targets)
                          .where(Dataset.id == dataset_id)).one()
    return unpack(row.target_dtype, [row.n_samples, *row.target_shape], row.targets)


def save_weights(session: Session, job_id: str, arrays: dict[str, np.ndarray]) -> None:
    """Replace the job's stored weights with `arrays`."""
    session.execute(delete(WeightArray).where(WeightArray.job_id == job_id))
    for name, a in arrays.items():
        dtype, shape, data = pack(a)
        session.add(WeightArray(job_id=job_id, name=name, dtype=dtype, shape=shape, data=data))


def load_weights(session: Session, job_id: str) -> dict[str, np.ndarray]:
    rows = session.scalars(select(WeightArray).where(WeightArray.job_id == job_id)
                           .order_by(WeightArray.name))
    return {r.name: unpack(r.dtype, r.shape, r.data) for r in rows}


def weight_layout(session: Session, job_id: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The names, dtypes and shapes of a job's stored weights, without reading the arrays."""
    rows = session.execute(select(WeightArray.name, WeightArray.dtype, WeightArray.shape)
                           .where(WeightArray.job_id == job_id))
    return {name: (dtype, tuple(shape)) for name, dtype, shape in rows}


def weight_shapes(session: Session, job_id: str) -> dict[str, tuple[int, ...]]:
    """The names and shapes of a job's stored weights, without reading the arrays."""
    return {name: shape for name, (_dtype, shape) in weight_layout(session, job_id).items()}


PER_LAYER_KEYS = ("grad_norms", "weight_norms")


def json_safe(value: Any) -> Any:
    """`value` with every infinite or NaN float as None: JSON has no such numbers (PostgreSQL's
    JSON refuses them), and a float32 norm or metric can overflow (say a gradient norm past
    3.4e38 that clip_norm then tamed)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def epoch_metrics(loss: float, metrics: dict[str, Any]) -> dict[str, Any]:
    """A stored epoch's loss and metrics as the job's `metrics`."""
    return {"loss": loss, **metrics}


def metrics_of_epoch(session: Session, job_id: str, epoch: int) -> dict[str, Any] | None:
    """The job's `metrics` as they were after `epoch`, or None when that epoch is not stored."""
    record = session.scalars(select(EpochRecord).where(EpochRecord.job_id == job_id,
                                                       EpochRecord.epoch == epoch)).first()
    return None if record is None else epoch_metrics(record.loss, record.metrics)


def forget_epochs_after(session: Session, job: Job, epoch: int) -> None:
    """Drop the epochs after `epoch` (trained again by the next attempt, or not kept), and take
    the job's progress and metrics back to that epoch's."""
    session.execute(delete(EpochRecord).where(EpochRecord.job_id == job.id, EpochRecord.epoch > epoch))
    job.epochs_done = epoch
    job.metrics = metrics_of_epoch(session, job.id, epoch) if epoch else None
    job.metrics_epoch = epoch if job.metrics is not None else None


def latest_checkpoint(session: Session, job_id: str) -> Checkpoint | None:
    """The job's checkpoint: one is committed at a time (see Checkpoint); the order only makes
    that explicit."""
    return session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)
                           .order_by(Checkpoint.epoch.desc(), Checkpoint.attempt.desc()).limit(1)).first()


def cancel_between_attempts(session: Session, job: Job) -> None:
    """Cancel a job that no attempt is running (queued, or claimed with a cancel already asked
    for). It keeps exactly what its checkpoint holds: those weights, the epochs up to it and that
    epoch's metrics. Epochs after the checkpoint, or all of them without one, have no stored
    weights (the next attempt would have trained them again), so they go too: status, history,
    metrics and weights always describe the same epoch."""
    checkpoint = latest_checkpoint(session, job.id)
    if checkpoint is not None:
        arrays, _ = arrays_from_npz(checkpoint.data)
        save_weights(session, job.id, weights_in_state(arrays))
    forget_epochs_after(session, job, checkpoint.epoch if checkpoint is not None else 0)
    session.execute(delete(Checkpoint).where(Checkpoint.job_id == job.id))
    job.status, job.stop_reason, job.finished_at = JobStatus.CANCELLED, "cancelled", utcnow()
    job.cancel_requested = True


def add_epochs(session: Session, job: Job, records: list[dict[str, Any]]) -> None:
    """Finished epochs, written together (COPY on PostgreSQL), and the job's progress and latest metrics."""
    if not records:
        return
    rows = []
    for record in records:
        metrics = {k: json_safe(v) for k, v in record.items()
                   if k not in ("epoch", "loss", "duration", *PER_LAYER_KEYS)}
        rows.append({"job_id": job.id, "epoch": record["epoch"], "loss": record["loss"], "metrics": metrics,
                     "grad_norms": json_safe(record.get("grad_norms", {})),
                     "weight_norms": json_safe(record.get("weight_norms", {})),
                     "duration": record["duration"]})
    if session.get_bind().dialect.name == "postgresql":
        _copy_epochs(session, rows)
    else:
        session.execute(insert(EpochRecord), rows)
    job.epochs_done = records[-1]["epoch"]
    job.metrics = epoch_metrics(records[-1]["loss"], rows[-1]["metrics"])
    job.metrics_epoch = records[-1]["epoch"]


EPOCH_COLUMNS = ("job_id", "epoch", "loss", "metrics", "grad_norms", "weight_norms", "duration")
JSON_COLUMNS = ("metrics", "grad_norms", "weight_norms")


def _copy_epochs(session: Session, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL's COPY, in the session's transaction: an INSERT per row (what executemany sends,
    pipelined) cost 40-85 us an epoch, as long as a small network's epoch trains. The driver's
    errors come out as SQLAlchemy's, as every other statement's do: a DiskFull under the raw
    cursor was no OperationalError to the worker, and failed the job for good."""
    import psycopg

    statement = f"COPY epochs ({', '.join(EPOCH_COLUMNS)}) FROM STDIN"
    try:
        with session.connection().connection.dbapi_connection.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row([json.dumps(row[c], allow_nan=False) if c in JSON_COLUMNS else row[c]
                                for c in EPOCH_COLUMNS])
    except psycopg.Error as exc:
        raise DBAPIError.instance(statement, None, exc, psycopg.Error) from exc
