"""/v1/jobs: submit a training job, follow it, read its history and weights, predict with it."""

from __future__ import annotations

import logging
from datetime import UTC
from typing import Any

import numpy as np
from flask import Blueprint, Response, current_app, request, url_for
from sqlalchemy import select

from core.db import EpochRecord, Job, JobStatus
from core.nn import Network, SpecError, check_training_spec
from core.nn.serialization import arrays_to_npz
from core.queue import enqueue_training
from core.store import create_dataset, load_weights

from .datasets import check_dataset_fits, not_found, numeric_array, parse_targets
from .errors import ApiError, validation_error
from .predict import ModelCache, predict
from .schemas import JobCreate, PredictRequest, parse, read_json_body

log = logging.getLogger(__name__)
bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")
models = ModelCache()


def ext() -> dict[str, Any]:
    return current_app.extensions["backprop"]


def iso(dt) -> str | None:
    """UTC timestamps with their offset; SQLite hands them back naive."""
    if dt is None:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).isoformat()


def job_json(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": job.status,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "progress": {"epoch": job.epochs_done, "total_epochs": job.total_epochs},
        "metrics": job.metrics,
        "stop_reason": job.stop_reason,
        "error": job.error,
        "attempts": job.attempts,
        "worker": job.worker,
        "dataset_id": job.dataset_id,
        "model": job.model_spec,
        "training": job.training_spec,
        "links": {
            "self": url_for("jobs.get_job", job_id=job.id),
            "epochs": url_for("jobs.get_epochs", job_id=job.id),
            "weights": url_for("jobs.get_weights", job_id=job.id),
            "predict": url_for("jobs.predict_job", job_id=job.id),
        },
    }


def spec_errors(exc: SpecError) -> ApiError:
    return validation_error(exc.errors)


@bp.post("")
def create_job():
    body = parse(JobCreate, read_json_body())
    try:
        net = Network.from_spec(body.model)
        training = check_training_spec(body.training)
    except SpecError as exc:
        raise spec_errors(exc) from None
    features = numeric_array(body.dataset.features, "dataset.features", min_ndim=2)
    targets, labels = parse_targets(body.dataset.targets, "dataset.targets")
    check_dataset_fits(features, targets, net.input_shape)
    try:
        net.loss.prepare_targets(targets, net.output_shape, net.dtype)
    except ValueError as exc:
        raise validation_error([{"path": "dataset.targets", "message": str(exc)}]) from None
    if body.dataset.feature_names is not None and len(body.dataset.feature_names) != features[0].size:
        raise validation_error([{"path": "dataset.feature_names",
                                 "message": f"has {len(body.dataset.feature_names)} names for "
                                            f"{features[0].size} features"}])
    sessions, celery = ext()["sessions"], ext()["celery"]
    with sessions.begin() as session:
        ds = create_dataset(session, features.astype(net.dtype), targets,
                            body.dataset.feature_names, labels)
        job = Job(dataset_id=ds.id, model_spec=net.spec, training_spec=training,
                  total_epochs=training["epochs"], status=JobStatus.QUEUED)
        session.add(job)
    # committed first, then enqueued: a worker never sees an id the database does not have
    try:
        enqueue_training(celery, job.id)
    except Exception as exc:  # broker down: leave no orphan behind
        log.error("could not enqueue job %s: %s", job.id, exc)
        with sessions.begin() as session:
            session.delete(session.get(Job, job.id))
            session.delete(session.get(type(ds), ds.id))
        raise ApiError(503, "broker_unavailable", "the job queue is unreachable; nothing was stored, "
                                                  "try again shortly", headers={"Retry-After": "5"}) from None
    log.info("job %s queued", job.id)
    with sessions() as session:
        job = session.get(Job, job.id)
        resp = current_app.response_class(current_app.json.dumps(job_json(job)), status=202,
                                          mimetype="application/json")
    resp.headers["Location"] = url_for("jobs.get_job", job_id=job.id)
    return resp


def load_job(session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise not_found("job", job_id)
    return job


@bp.get("/<job_id>")
def get_job(job_id: str):
    with ext()["sessions"]() as session:
        return job_json(load_job(session, job_id))


@bp.get("/<job_id>/epochs")
def get_epochs(job_id: str):
    with ext()["sessions"]() as session:
        load_job(session, job_id)
        rows = session.scalars(select(EpochRecord).where(EpochRecord.job_id == job_id)
                               .order_by(EpochRecord.epoch))
        return {"job_id": job_id, "epochs": [
            {"epoch": r.epoch, "loss": r.loss, **r.metrics, "duration": r.duration,
             "grad_norms": r.grad_norms, "weight_norms": r.weight_norms} for r in rows]}


def finished_weights(session, job: Job) -> dict[str, np.ndarray]:
    weights = load_weights(session, job.id)
    if not weights:
        raise ApiError(409, "job_not_finished",
                       f"job {job.id} is {job.status}; weights are stored when training ends",
                       job_status=job.status)
    return weights


@bp.get("/<job_id>/weights")
def get_weights(job_id: str):
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "npz"):
        raise validation_error([{"path": "format", "message": "must be json or npz"}])
    with ext()["sessions"]() as session:
        job = load_job(session, job_id)
        weights = finished_weights(session, job)
    if fmt == "npz":
        return Response(arrays_to_npz(weights), mimetype="application/octet-stream",
                        headers={"Content-Disposition": f"attachment; filename=job-{job_id}-weights.npz"})
    return {"job_id": job_id, "status": job.status, "weights": [
        {"name": name, "layer": name.rsplit("/", 1)[0], "param": name.rsplit("/", 1)[1],
         "dtype": a.dtype.name, "shape": list(a.shape), "values": a.tolist()}
        for name, a in weights.items()]}


@bp.post("/<job_id>/predict")
def predict_job(job_id: str):
    body = parse(PredictRequest, read_json_body())
    rows, path = (body.instances, "instances") if body.instances is not None else (body.inputs, "inputs")
    if rows is None:
        raise validation_error([{"path": "inputs", "message": "send inputs (or instances): a list of rows"}])
    with ext()["sessions"]() as session:
        job = load_job(session, job_id)
        if job.status != JobStatus.SUCCEEDED:
            raise ApiError(409, "job_not_finished", f"job {job_id} is {job.status}; predict needs a "
                           "succeeded job", job_status=job.status)
        net, labels = models.get(session, job)
    return {"job_id": job_id, **predict(net, rows, labels, path)}
