"""Limits on every input, checked before anything is stored or queued, so that no request can
take the service down: spec size, dataset size, a compute budget, active jobs per tenant, and
a per-key request rate (shared through Redis when Redis is the broker)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from flask import Flask, current_app, g, request
from flask_limiter import Limiter, RateLimitExceeded
from sqlalchemy import func, select, text

from core.config import Settings
from core.db import Dataset, Job, JobStatus
from core.nn import Network
from core.store import job_storage_bytes

from .errors import ApiError, problem, validation_error


def settings() -> Settings:
    return current_app.extensions["backprop"]["settings"]


MAX_WINDOW = 256  # kernel, pool and stride sizes
MAX_LAYER_NAME = 128  # a name keys every epoch's norms and the weights (a 70,000-letter one broke the .npz)
MAX_INPUT_AXES = 8  # NumPy holds at most 64; no layer but dense takes more than 3


def _number(v: Any) -> bool:
    """Integral floats (9000.0) pass the spec's integer fields, so limits must see them too."""
    return isinstance(v, int | float) and not isinstance(v, bool)


def check_parameter_count(parameters: int) -> None:
    limit = settings().max_parameters
    if parameters > limit:
        raise ApiError(422, "model_too_large", f"the model has {parameters} parameters; the limit is {limit}",
                       errors=[{"path": "model.layers", "message": f"{parameters} parameters > limit {limit}"}],
                       parameters=parameters, limit=limit)


def _walk_layers(layers: Any, path: str):
    if not isinstance(layers, list):
        return
    for i, layer in enumerate(layers):
        if isinstance(layer, dict):
            yield f"{path}[{i}]", layer
            yield from _walk_layers(layer.get("layers"), f"{path}[{i}].layers")


def check_spec_limits(model: dict[str, Any], training: dict[str, Any]) -> None:
    """Size limits on the raw spec, before any weight is allocated."""
    s = settings()
    errors = []
    layers = list(_walk_layers(model.get("layers"), "model.layers"))
    if len(layers) > s.max_layers:
        errors.append({"path": "model.layers", "message": f"has {len(layers)} layers; the limit is {s.max_layers}"})
    for path, layer in layers:
        name = layer.get("name")
        if isinstance(name, str) and len(name) > MAX_LAYER_NAME:
            errors.append({"path": f"{path}.name", "message": f"must be at most {MAX_LAYER_NAME} characters, "
                                                              f"not {len(name)} (server limit)"})
        for key in ("units", "filters"):
            v = layer.get(key)
            if _number(v) and v > s.max_units:
                errors.append({"path": f"{path}.{key}", "message": f"must be <= {s.max_units} (server limit)"})
        for key in ("kernel_size", "pool_size", "strides"):
            values = layer.get(key) if isinstance(layer.get(key), list) else [layer.get(key)]
            if any(_number(v) and v > MAX_WINDOW for v in values):
                errors.append({"path": f"{path}.{key}", "message": f"must be <= {MAX_WINDOW} (server limit)"})
    shape = model.get("input_shape")
    if isinstance(shape, list) and len(shape) > MAX_INPUT_AXES:
        errors.append({"path": "model.input_shape", "message": f"must have at most {MAX_INPUT_AXES} axes, "
                                                               f"not {len(shape)} (server limit)"})
    elif isinstance(shape, list) and all(_number(d) and d > 0 for d in shape):
        if int(np.prod(shape, dtype=np.float64)) > s.max_sample_values:
            errors.append({"path": "model.input_shape",
                           "message": f"one sample may hold at most {s.max_sample_values} values"})
    epochs = training.get("epochs") if isinstance(training, dict) else None
    if _number(epochs) and epochs > s.max_epochs:
        errors.append({"path": "training.epochs", "message": f"must be <= {s.max_epochs} (server limit)"})
    if errors:
        raise validation_error(errors)


def check_dataset_limits(n_rows: int, values_per_row: int, path: str) -> None:
    s = settings()
    if n_rows > s.max_rows:
        raise validation_error([{"path": path, "message": f"has {n_rows} rows; the limit is {s.max_rows}"}])
    if values_per_row > s.max_sample_values:
        raise validation_error([{"path": path, "message": f"each sample has {values_per_row} values; "
                                                          f"the limit is {s.max_sample_values}"}])
    if n_rows * values_per_row > s.max_dataset_values:
        raise validation_error([{"path": path, "message": f"holds {n_rows * values_per_row} values; "
                                                          f"the limit is {s.max_dataset_values}"}])


# What one step of a batch that runs one after another (a recurrent step, a pooling window's
# offset: Layer.loop_steps) costs whatever its size (a few NumPy calls, ~10 us), in
# multiply-adds: about what 10 us of a GEMM does. Without it an LSTM of 8 units over 100,000
# steps, or a 1000 x 1000 pooling window, would look cheap and hold a worker for hours.
STEP_COST = 100_000


def check_compute_budget(net: Network, samples: int, batch_size: int, epochs: int) -> None:
    """The forward pass's multiply-adds x samples x epochs (backward costs about twice the
    forward, so this is a third of the work), plus STEP_COST per sequential step per batch."""
    macs, _ = net.cost()
    batches = -(-samples // batch_size)
    cost = float(epochs) * (float(macs) * samples + float(batches) * net.sequential_steps * STEP_COST)
    limit = settings().max_compute
    if cost > limit:
        raise ApiError(422, "compute_budget_exceeded",
                       f"this job needs about {cost:.3g} multiply-adds ({macs} per sample forward x "
                       f"{samples} samples x {epochs} epochs"
                       + (f", with {net.sequential_steps} steps per batch that run one after another"
                          if net.sequential_steps else "")
                       + f"); the limit is {limit:.3g}",
                       errors=[{"path": "training.epochs", "message": f"compute {cost:.3g} > limit {limit:.3g}"}],
                       compute=cost, limit=limit)


def check_training_cost(net: Network, samples: int, batch_size: int, epochs: int) -> None:
    """The memory and compute limits of a job, for a submit and a retry alike; a batch larger
    than the data is the data."""
    batch_size = min(batch_size, samples)
    check_batch_memory(net, batch_size)
    check_compute_budget(net, samples, batch_size, epochs)


def check_batch_memory(net: Network, batch_size: int) -> None:
    """What a training batch holds (activations kept for backward, a convolution's patches, a
    recurrent layer's states, their gradients), estimated from the layers' shapes before the
    job is queued: past the limit the worker would run out of memory, or be killed."""
    _, held = net.cost()
    need = float(held) * batch_size * net.dtype.itemsize
    limit = settings().max_batch_mb * 2**20
    if need > limit:
        per_sample = held * net.dtype.itemsize / 2**20
        raise ApiError(422, "batch_too_large",
                       f"a batch of {batch_size} would hold about {need / 2**20:,.0f} MB "
                       f"({per_sample:,.2f} MB per sample); the limit is {limit / 2**20:,.0f} MB "
                       f"(BACKPROP_MAX_BATCH_MB)",
                       errors=[{"path": "training.batch_size", "message": f"needs about {need / 2**20:,.0f} MB > limit "
                                                         f"{limit / 2**20:,.0f} MB; use a smaller batch or "
                                                         f"network"}],
                       memory_mb=round(need / 2**20, 1), limit_mb=limit / 2**20)


class TenantSlots:
    """Requests of one kind that a web process serves at once (event streams, predictions):
    `total` in all (threads must be left for everything else), and `per_tenant` for any one
    tenant, so that one cannot hold every slot (streams last minutes and clients reconnect; a
    loop of large predictions keeps them busy) and leave the others without."""

    def __init__(self, total: int, per_tenant: int):
        self.total, self.per_tenant = total, per_tenant
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}

    def acquire(self, tenant: str) -> bool:
        with self._lock:
            if sum(self._held.values()) >= self.total or self._held.get(tenant, 0) >= self.per_tenant:
                return False
            self._held[tenant] = self._held.get(tenant, 0) + 1
            return True

    def release(self, tenant: str) -> None:
        with self._lock:
            self._held[tenant] -= 1
            if not self._held[tenant]:
                del self._held[tenant]


@dataclass(frozen=True)
class PredictLimits:
    """What one predict request may ask, taken from the settings in the request and passed on:
    the web threads predict outside the app context (app/predict.py)."""
    values: int  # rows x outputs answered (BACKPROP_MAX_PREDICT_VALUES)
    compute: float  # rows x the forward pass's multiply-adds (BACKPROP_MAX_PREDICT_COMPUTE)

    @classmethod
    def current(cls) -> PredictLimits:
        s = settings()
        return cls(s.max_predict_values, s.max_predict_compute)


def check_predict_size(rows: int, net: Network, path: str, limits: PredictLimits) -> None:
    """A predict answer is rows x outputs numbers in JSON (about 20 bytes each), and its work
    rows x the forward pass's multiply-adds, on a web thread: a deep conv net over 400 rows took
    29 s, and 16 such requests held every thread of the API for minutes."""
    outputs = int(np.prod(net.output_shape))
    if rows * outputs > limits.values:
        raise validation_error([{"path": path, "message": f"{rows} rows x {outputs} outputs = {rows * outputs} "
                                                          f"values to answer; the limit is {limits.values} per "
                                                          f"request (BACKPROP_MAX_PREDICT_VALUES)"}])
    macs = net.cost()[0]
    if rows * macs > limits.compute:
        fit = int(limits.compute // macs)
        advice = f"send at most {fit} rows at a time" if fit else "one row alone needs more"
        raise validation_error([{"path": path, "message": f"{rows} rows x {macs} multiply-adds each = "
                                                          f"{rows * macs:.3g}; the limit is {limits.compute:.3g} per "
                                                          f"request (BACKPROP_MAX_PREDICT_COMPUTE): {advice}"}])


def _in_turn(session, key: str) -> None:
    """Transactions that call this with the same key run in turn from here to their end: on
    PostgreSQL by an advisory lock on the key; SQLite's write transactions already do."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})


def check_active_jobs(session, tenant: str, in_turn: bool = True) -> None:
    """Called in the transaction that adds the job, just before it does. Two submits must not
    both count the jobs before either adds its own (30 at once let 9 through a limit of 5): on
    PostgreSQL a lock per tenant, held to the end of the transaction, puts them in turn; SQLite's
    write transactions already are (core/db: BEGIN IMMEDIATE). `in_turn=False`: a count only,
    to refuse early, before a submit reads and stores its data."""
    limit = settings().max_active_jobs
    if in_turn:
        _in_turn(session, f"active_jobs:{tenant}")
    active = session.scalar(select(func.count()).select_from(Job)
                            .where(Job.tenant == tenant, Job.status.in_(JobStatus.ACTIVE)))
    if active >= limit:
        raise ApiError(429, "too_many_active_jobs", f"{active} jobs are queued or running; the limit is {limit} "
                       "per tenant, wait for one to finish", headers={"Retry-After": "30"})


def check_dataset_storage(session, tenant: str, adding: int) -> None:
    """Called in the transaction that stores a dataset (uploaded, or inline in a job), before it
    does: a tenant's stored datasets hold at most BACKPROP_MAX_TENANT_DATASET_BYTES. Without a
    bound, uploads of a few hundred KB each (.npz of zeros) grew the database by gigabytes. On
    PostgreSQL concurrent stores run in turn, as concurrent submits do for check_active_jobs."""
    limit = settings().max_tenant_dataset_bytes
    _in_turn(session, f"datasets:{tenant}")
    stored = func.length(Dataset.features) + func.length(Dataset.targets)
    held = session.scalar(select(func.coalesce(func.sum(stored), 0)).where(Dataset.tenant == tenant))
    if held + adding > limit:
        raise ApiError(409, "dataset_storage_full",
                       f"this dataset takes {adding} bytes and the tenant's datasets already hold {held}; the limit "
                       f"is {limit} (BACKPROP_MAX_TENANT_DATASET_BYTES): delete datasets, or jobs whose data was "
                       "sent inline, to make room")


def check_job_storage(session, tenant: str, net: Network, training: dict[str, Any]) -> int:
    """Called in the transaction that adds a job, after check_active_jobs (whose per-tenant lock
    puts a tenant's submits in turn): a tenant's jobs store at most BACKPROP_MAX_TENANT_JOB_BYTES,
    counted as each job's bound, which is returned for the new job's row. Stored weights and
    histories were bounded per job only: twenty jobs at a time, each finished one kept, grew the
    database shared by every tenant without end."""
    limit = settings().max_tenant_job_bytes
    adding = job_storage_bytes(net, training)
    held = session.scalar(select(func.coalesce(func.sum(Job.storage_bytes), 0)).where(Job.tenant == tenant))
    if held + adding > limit:
        raise ApiError(409, "job_storage_full",
                       f"this job may store {adding} bytes (weights and epoch history) and the tenant's jobs "
                       f"already may hold {held}; the limit is {limit} (BACKPROP_MAX_TENANT_JOB_BYTES): delete "
                       "finished jobs to make room")
    return adding


def _rate_key() -> str:
    """Per API key (authentication runs first, so only a valid key gets its own budget), else per
    client address: a caller cannot buy a fresh budget by sending a made-up Authorization header."""
    key_id = g.get("api_key_id")
    return f"key:{key_id}" if key_id else "addr:" + (request.remote_addr or "unknown")


# Every /v1 request asks the limiter's Redis first. One that accepts connections and never
# answers would add its whole timeout to each request (5 s with the broker's), so the limiter
# gives up after 1 s and lets the request through (swallow_errors): rate limiting fails open.
LIMITER_REDIS_TIMEOUTS = {"socket_timeout": 1, "socket_connect_timeout": 1}


def init_rate_limit(app: Flask) -> None:
    s: Settings = app.extensions["backprop"]["settings"]
    storage = s.broker_url if s.broker_url.startswith("redis") else "memory://"
    # an application limit: one budget per key for every /v1 route together (default_limits
    # would give each route a budget of its own, so a key could make routes x the rate)
    limiter = Limiter(_rate_key, app=app, application_limits=[s.rate_limit], storage_uri=storage,
                      storage_options=LIMITER_REDIS_TIMEOUTS if storage != "memory://" else {},
                      strategy="fixed-window", swallow_errors=True,
                      application_limits_exempt_when=lambda: not request.path.startswith("/v1/"))

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(exc: RateLimitExceeded):
        # Retry-After only here: Flask-Limiter's own headers would put it on every response
        current = limiter.current_limit
        retry = max(1, int(current.reset_at - time.time()) + 1) if current is not None else 60
        return problem(429, "rate_limited", "Too many requests", f"rate limit exceeded: {exc.description}",
                       headers={"Retry-After": str(retry)})
