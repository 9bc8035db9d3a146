"""/v1/jobs: submit, list, follow (poll or Server-Sent Events), cancel, retry, delete, and read
a job's history, diagnostics, weights and predictions."""

from __future__ import annotations

import io
import json
import logging
import math
import re
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from flask import Blueprint, Response, current_app, request, stream_with_context, url_for
from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError, NoResultFound
from sqlalchemy.orm import defer, object_session
from sqlalchemy.orm.exc import ObjectDeletedError

from core.db import JOB_UPDATE_LOCK, Dataset, EpochRecord, Job, JobStatus, ModelVersion, RegisteredModel, WeightArray
from core.db.models import utcnow
from core.logs import job_id_var
from core.nn import Network, SpecError, Trainer, check_training_spec
from core.nn.network import shapes_only
from core.nn.training import validation_split
from core.queue import enqueue_training
from core.store import (
    ARRAY_DTYPES,
    cancel_between_attempts,
    create_dataset,
    dataset_arrays,
    dataset_targets,
    json_safe,
    load_weights,
    output_classes,
    weight_layout,
    weight_shapes,
)

from .auth import current_tenant, key_still_valid
from .datasets import (
    as_model_dtype,
    check_class_count,
    check_dataset_fits,
    check_names,
    dataset_summary_fields,
    not_found,
    numeric_array,
    parse_targets,
)
from .errors import ApiError, first_line, validation_error
from .idempotency import idempotent
from .limits import (
    check_active_jobs,
    check_dataset_limits,
    check_dataset_storage,
    check_job_storage,
    check_parameter_count,
    check_spec_limits,
    check_training_cost,
)
from .openapi import doc, parse_query
from .pagination import aware, iso, newest_first, page
from .predict import answer
from .schemas import (
    DIAGNOSTICS_POINTS,
    Diagnostics,
    DiagnosticsQuery,
    EpochOut,
    EpochPage,
    EpochQuery,
    EventsQuery,
    JobCreate,
    JobGone,
    JobListQuery,
    JobOut,
    JobPage,
    PredictOut,
    PredictRequest,
    WeightsOut,
    WeightsQuery,
    parse,
    read_json_body,
)

log = logging.getLogger(__name__)
bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")
TAG = "jobs"


def ext() -> dict[str, Any]:
    return current_app.extensions["backprop"]


ETA_EPOCHS = 20  # the recent epochs whose durations predict the rest


def recent_epoch_seconds(session, jobs: list[Job]) -> dict[str, float]:
    """The mean duration of each running job's latest epochs, for all of `jobs` in one query (a
    listing made one query per running job)."""
    running = [j for j in jobs if j.status == JobStatus.RUNNING and j.epochs_done]
    if not running:
        return {}
    # each job's range of epochs with its bounds as literals, so that each is one range of the
    # (job_id, epoch) index; bounded by a joined epochs_done it read all of a job's epochs
    # (40,000 rows for 20 on PostgreSQL, on every status poll of a long job)
    latest = or_(*(and_(EpochRecord.job_id == j.id, EpochRecord.epoch > j.epochs_done - ETA_EPOCHS,
                        EpochRecord.epoch <= j.epochs_done) for j in running))
    rows = session.execute(select(EpochRecord.job_id, func.avg(EpochRecord.duration)).where(latest)
                           .group_by(EpochRecord.job_id))
    return {job_id: avg for job_id, avg in rows if avg is not None}


def eta_seconds(job: Job, recent: dict[str, float]) -> float | None:
    """From the durations of the latest epochs (`recent_epoch_seconds`): a job resumed from a
    checkpoint has a start time that also covers the downtime and the epochs it trained again,
    which made the time since the start over the epochs done overstate the rest (270 s for 45)."""
    if job.status != JobStatus.RUNNING or not job.epochs_done or job.started_at is None:
        return None
    left = max(job.total_epochs - job.epochs_done, 0)
    if job.id in recent:
        return round(recent[job.id] * left, 3)
    per_epoch = (utcnow() - job.started_at).total_seconds() / job.epochs_done
    return round(per_epoch * left, 3)


def job_json(job: Job, recent: dict[str, float] | None = None) -> dict[str, Any]:
    """`recent` is `recent_epoch_seconds` of a listing's jobs; a single job looks its own up."""
    if recent is None:
        session = object_session(job)
        recent = recent_epoch_seconds(session, [job]) if session is not None else {}
    links = {name: url_for(f"jobs.{view}", job_id=job.id) for name, view in (
        ("self", "get_job"), ("epochs", "get_epochs"), ("weights", "get_weights"), ("predict", "predict_job"),
        ("diagnostics", "get_diagnostics"), ("events", "job_events"))}
    return {
        "id": job.id, "status": job.status, "created_at": iso(job.created_at),
        "started_at": iso(job.started_at), "finished_at": iso(job.finished_at),
        "progress": {"epoch": job.epochs_done, "total_epochs": job.total_epochs},
        "eta_seconds": eta_seconds(job, recent), "metrics": json_safe(job.metrics),
        "metrics_epoch": job.metrics_epoch, "stop_reason": job.stop_reason,
        "error": job.error, "attempts": job.attempts, "worker": job.worker, "dataset_id": job.dataset_id,
        "init_from": job.init_from, "fine_tuned_from": job.fine_tuned_from, "freeze": job.freeze,
        "retry_of": job.retry_of,
        "model": job.model_spec, "training": job.training_spec, "links": links,
    }


JOB_LOCKS = {"update": JOB_UPDATE_LOCK, "delete": True, "share": {"read": True}}


def load_job(session, job_id: str, lock: Literal["update", "delete", "share"] | None = None) -> Job:
    """The caller's job; another tenant's looks exactly like a missing one. With `lock` it is read
    under a row lock (FOR NO KEY UPDATE, FOR UPDATE or FOR SHARE) in the same statement, so that a
    request racing a delete of it finds it gone (404) rather than locking a row that no longer exists."""
    if lock:
        job = session.get(Job, job_id, populate_existing=True, with_for_update=JOB_LOCKS[lock])
    else:
        job = session.get(Job, job_id)
    if job is None or job.tenant != current_tenant():
        raise not_found("job", job_id)
    return job


def accepted(body: dict[str, Any]) -> Response:
    """The 202 for a committed job, from the body its own transaction built: once the job is
    committed, no database error may turn the answer into a 503 "try again", whose retry would
    run the job twice."""
    resp = current_app.response_class(current_app.json.dumps(body), status=202, mimetype="application/json")
    resp.headers["Location"] = body["links"]["self"]
    return resp


def enqueue(job_id: str) -> None:
    """Send a committed job's id to the broker. If the broker is down the job stays recorded
    with enqueued_at unset, and the workers' reconciler sends it once the broker is back:
    an accepted job is never lost, and the client still gets its 202."""
    job_id_var.set(job_id)  # the lines below, and the access log, are about this job
    try:
        enqueue_training(ext()["celery"], job_id)
    except Exception as exc:  # noqa: BLE001 - any broker failure
        log.warning("broker unavailable, job %s left for the reconciler: %s", job_id, exc)
        return
    try:
        with ext()["sessions"].begin() as session:
            session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))
    except Exception as exc:  # noqa: BLE001 - sent all the same; the reconciler may send it again
        log.warning("job %s queued, but its sending could not be recorded: %s", job_id, first_line(exc))
        return
    log.info("job %s queued", job_id)


def _check_fine_tuning(session, body: JobCreate, net: Network) -> None:
    if body.init_from is None:
        if body.freeze:
            raise validation_error([{"path": "freeze", "message": "only applies with init_from"}])
        return
    parent = session.get(Job, body.init_from)
    if parent is None or parent.tenant != current_tenant():
        raise ApiError(404, "job_not_found", f"init_from: no job with id {body.init_from!r}",
                       errors=[{"path": "init_from", "message": f"no job with id {body.init_from!r}"}])
    weights = weight_shapes(session, parent.id)  # shapes only: the arrays stay in the database
    if not weights:
        raise no_weights(parent, errors=[{"path": "init_from", "message": "the job has no stored weights"}])
    mine = {name: tuple(a.shape) for name, a in {**net.params(), **net.buffers()}.items()}
    problems = []
    for name in sorted(set(mine) | set(weights)):
        if name not in weights:
            problems.append(f"{name} is new in this spec")
        elif name not in mine:
            problems.append(f"{name} exists in job {parent.id} but not in this spec")
        elif mine[name] != weights[name]:
            problems.append(f"{name}: job {parent.id} has shape {list(weights[name])}, "
                            f"this spec {list(mine[name])}")
    if problems:
        raise validation_error([{"path": "model", "message": "architecture differs from init_from: " + p}
                                for p in problems])
    if body.freeze:
        names = [layer.name for layer in net.layers]
        for i, name in enumerate(body.freeze):
            if name not in names:
                raise validation_error([{"path": f"freeze[{i}]", "message": f"no layer {name!r}; layers: {names}"}])


@bp.post("")
@doc("Submit a training job", body=JobCreate, response=JobOut, status=202, errors=(404, 409, 429), tag=TAG,
     description="Validates the spec and data, stores the job, and queues it. Answers 202 with a Location.")
@idempotent
def create_job():
    body = parse(JobCreate, read_json_body())
    check_spec_limits(body.model, body.training)
    try:
        # shapes only: every check here reads shapes, names and costs, never a weight. Building
        # the network ran its initialisers on this thread (an orthogonal 4096 x 4096 kernel in
        # float64: 6 s and 800 MB for a 285-byte body that then failed on its dataset_id); the
        # worker initialises the weights
        net = shapes_only(body.model)
        check_parameter_count(net.parameter_count)
        training = check_training_spec(body.training)
    except SpecError as exc:
        raise validation_error(exc.errors) from None
    except (ValueError, MemoryError) as exc:  # a shape the layers cannot build at all
        raise validation_error([{"path": "model", "message": f"cannot build this network: {exc}"}]) from None
    if (body.dataset is None) == (body.dataset_id is None):
        raise validation_error([{"path": "dataset", "message": "give exactly one of dataset (inline) or dataset_id"}])
    sessions = ext()["sessions"]
    try:
        job_id, accepted_body = _create_job(sessions, body, net, training)
    except (IntegrityError, NoResultFound, ObjectDeletedError):
        # the parent job or the dataset was deleted between the checks and the commit, or while
        # the dataset was read
        with sessions() as session:
            if body.init_from is not None and session.get(Job, body.init_from) is None:
                raise ApiError(404, "job_not_found", f"init_from: no job with id {body.init_from!r}",
                               errors=[{"path": "init_from", "message": "the job was deleted"}]) from None
            if body.dataset_id is not None and session.get(Dataset, body.dataset_id) is None:
                raise validation_error([{"path": "dataset_id", "message": f"no dataset with id "
                                                                          f"{body.dataset_id!r}"}]) from None
        raise
    # committed first, then enqueued: a worker never sees an id the database does not have
    enqueue(job_id)
    return accepted(accepted_body)


def _create_job(sessions, body: JobCreate, net: Network, training: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """`net` is shapes only. The data is found and its shapes checked, then the job's memory and
    compute, before any of the data's values are read or converted."""
    with sessions.begin() as session:
        check_active_jobs(session, current_tenant(), in_turn=False)  # at the limit: refused before the data work
        _check_fine_tuning(session, body, net)
        if body.dataset is not None:
            features = numeric_array(body.dataset.features, "dataset.features", min_ndim=2)
            check_dataset_limits(features.shape[0], features[0].size, "dataset.features")
            targets, labels = parse_targets(body.dataset.targets, "dataset.targets")
            check_dataset_fits(features, targets, net.input_shape)
            check_training_cost(net, len(features), training["batch_size"], training["epochs"])
            # checked against the model's dtype, but stored as given (float64), as an upload is: a
            # later float64 job on this dataset_id must not train on float32-rounded values
            as_model_dtype(features, net.dtype, "dataset.features")
            output_labels = _fine_tuned_labels(session, body.init_from, labels, "dataset.targets")
            _check_training_fits(net, training, targets, labels, "dataset.targets", output_labels)
            if net.classification and targets.ndim == 1:  # class indices or labels: as an upload's
                check_class_count(targets, labels, "dataset.targets")
            names = body.dataset.feature_names
            check_names(names, int(features[0].size), "dataset.feature_names")
            check_dataset_storage(session, current_tenant(), features.nbytes + targets.nbytes)
            ds = create_dataset(session, features, targets, names, labels,
                                tenant=current_tenant(), source="inline",
                                **dataset_summary_fields(targets, labels, net.classification))
        else:
            ds = session.get(Dataset, body.dataset_id, options=[defer(Dataset.features), defer(Dataset.targets)])
            if ds is None or ds.tenant != current_tenant():
                raise validation_error([{"path": "dataset_id", "message": f"no dataset with id {body.dataset_id!r}"}])
            if ds.feature_shape != list(net.input_shape):
                raise validation_error([{"path": "dataset_id", "message":
                                         f"samples have shape {ds.feature_shape}, model.input_shape is "
                                         f"{list(net.input_shape)}"}])
            check_training_cost(net, ds.n_samples, training["batch_size"], training["epochs"])
            if np.dtype(ds.feature_dtype).itemsize > net.dtype.itemsize:  # float64 data, a float32 model
                features, targets = dataset_arrays(ds)
                as_model_dtype(features, net.dtype, "dataset_id", name="features")
            else:
                targets = dataset_targets(session, ds.id)  # the features stay in the database
            output_labels = _fine_tuned_labels(session, body.init_from, ds.class_labels, "dataset_id")
            _check_training_fits(net, training, targets, ds.class_labels, "dataset_id", output_labels)
        # last: its per-tenant lock is held to the commit, so that the tenant's submits take turns
        # for the count and insert only, not while each reads and stores its data (seconds)
        check_active_jobs(session, current_tenant())
        storage = check_job_storage(session, current_tenant(), net, training)
        job = Job(tenant=current_tenant(), dataset_id=ds.id, model_spec=net.spec, training_spec=training,
                  total_epochs=training["epochs"], status=JobStatus.QUEUED, init_from=body.init_from,
                  fine_tuned_from=body.init_from, freeze=body.freeze, class_labels=output_labels,
                  storage_bytes=storage)
        session.add(job)
        session.flush()
        return job.id, job_json(job)


def _fine_tuned_labels(session, init_from: str | None, labels: list[Any] | None, path: str) -> list[Any] | None:
    """The labels of a fine-tune's output units when they are not its data's: the parent's, of
    which the data has only some (new samples of two classes of three). Output unit i answers
    the parent's i-th label, so data with a class the parent did not learn is refused: the
    parent's units would answer for other classes."""
    if init_from is None:
        return None
    own, of_data = session.execute(select(Job.class_labels, Dataset.class_labels)
                                   .join(Dataset, Job.dataset_id == Dataset.id).where(Job.id == init_from)).one()
    parent = own if own is not None else of_data
    unknown = [label for label in labels if label not in parent] if labels is not None and parent is not None else []
    if (parent is None) != (labels is None) or unknown:
        mine = "class indices or numbers" if labels is None else f"the classes {unknown}"
        theirs = "class indices or numbers" if parent is None else list(parent)
        raise validation_error([{"path": path, "message": f"has {mine}, but init_from job {init_from} "
                                                          f"learned {theirs}; its output units would answer for "
                                                          f"other classes"}])
    return None if parent is None or list(parent) == list(labels) else list(parent)


def _check_training_fits(net: Network, training: dict[str, Any], targets: np.ndarray,
                         labels: list[Any] | None, path: str, output_labels: list[Any] | None = None) -> None:
    """Everything the worker would otherwise only find out after the job was queued: targets
    that do not fit the output, class labels with a regression loss, a validation split that
    leaves no validation samples, and monitors that name metrics this run will not record.
    `output_labels`: the units' labels when they are not the data's (_fine_tuned_labels)."""
    if output_labels is not None:  # the targets as the worker will train on them
        targets, labels = output_classes(targets, labels, output_labels), output_labels
    if labels is not None and not net.classification:
        raise validation_error([{"path": path, "message": f"class labels need a classification loss, "
                                                          f"not {net.spec['loss']}"}])
    if labels is not None:  # predict answers output unit i as labels[i]: one label per unit
        classes = net.class_count
        if len(labels) != classes:
            shown = ", ".join(map(repr, labels[:10])) + (", ..." if len(labels) > 10 else "")
            raise validation_error([{"path": path, "message": f"has {len(labels)} class labels ({shown}) and "
                                                              f"the output layer gives {classes} classes; they "
                                                              f"must match"}])
    try:
        y = net.loss.prepare_targets(targets, net.output_shape, net.dtype)
    except ValueError as exc:
        raise validation_error([{"path": path, "message": str(exc) + _numbers_as_labels_hint(net, targets, labels)}]
                               ) from None
    validation = training["validation_split"] > 0
    if validation:
        train_idx, val_idx = validation_split(y, training, net.classification)  # the worker's split, exactly
        if len(val_idx) == 0 or len(train_idx) == 0:
            raise validation_error([{"path": "training.validation_split", "message":
                                     f"leaves {len(train_idx)} training and {len(val_idx)} validation samples "
                                     f"of {len(y)}"}])
    try:
        Trainer(net, training).check_metric_names(validation)
    except SpecError as exc:
        raise validation_error(exc.errors) from None


def _numbers_as_labels_hint(net: Network, targets: np.ndarray, labels: list[Any] | None) -> str:
    """Numbers are class indices, not labels: wine's classes 1..3 (or {0, 5, 10}) are refused
    for a 3-unit output, where scikit-learn would take them as labels. Say how to send them."""
    if labels is not None or not net.classification or targets.dtype.kind not in "iuf" or targets.size == 0:
        return ""
    units = 2 if net.spec["loss"] == "binary_crossentropy" else net.class_count
    if targets.min() >= 0 and targets.max() < units:
        return ""
    return ('; numbers are read as class indices (0..k-1): send class labels as strings, e.g. "1", '
            '"2", "3", or upload the dataset with task=labels, to have them mapped to the output units in '
            'sorted order')


def _parse_time(value: str, path: str) -> datetime:
    """An ISO 8601 timestamp as UTC (the database compares the digits, so the offset must be
    applied first); naive means UTC. A `+` sent unencoded in a query string arrives as a space."""
    value = re.sub(r" (\d{2}(:?\d{2})?)$", r"+\1", value.strip()).replace("Z", "+00:00")
    try:
        return aware(datetime.fromisoformat(value)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise validation_error([{"path": path, "message": "must be an ISO 8601 timestamp"}]) from None


@bp.get("")
@doc("List jobs, newest first", query=JobListQuery, response=JobPage, tag=TAG)
def list_jobs():
    q = parse_query(JobListQuery)
    stmt = select(Job).where(Job.tenant == current_tenant())
    if q.status:
        statuses = [s.strip() for s in q.status.split(",") if s.strip()]
        bad = [s for s in statuses if s not in JobStatus.ALL] or ([] if statuses else [q.status])
        if bad:
            raise validation_error([{"path": "status", "message": f"unknown status {bad[0]!r}; one of "
                                                                  f"{', '.join(JobStatus.ALL)}"}])
        stmt = stmt.where(Job.status.in_(statuses))
    if q.dataset_id:
        stmt = stmt.where(Job.dataset_id == q.dataset_id)
    if q.created_after:
        stmt = stmt.where(Job.created_at > _parse_time(q.created_after, "created_after"))
    if q.created_before:
        stmt = stmt.where(Job.created_at < _parse_time(q.created_before, "created_before"))
    stmt = newest_first(stmt, Job, q.limit, q.next)
    with ext()["sessions"]() as session:
        jobs, cursor = page(list(session.scalars(stmt)), q.limit)
        recent = recent_epoch_seconds(session, jobs)
        return {"jobs": [job_json(j, recent) for j in jobs], "next": cursor}


@bp.get("/<job_id>")
@doc("Status, progress and latest metrics of a job", response=JobOut, errors=(404,), tag=TAG)
def get_job(job_id: str):
    with ext()["sessions"]() as session:
        return job_json(load_job(session, job_id))


@bp.post("/<job_id>/cancel")
@doc("Cancel a queued or running job", response=JobOut, status=202, errors=(404, 409), tag=TAG,
     description="A queued job is cancelled at once (one that ran before keeps what its last checkpoint holds); "
                 "a running one becomes `cancelling` and stops within an epoch, keeping the weights of its last "
                 "finished epoch. 409 `job_finished` once it ended.")
def cancel_job(job_id: str):
    with ext()["sessions"].begin() as session:
        # the row lock orders this against a worker claiming or finishing the job at this very
        # moment (they lock it too), so a finished job stays finished
        job = load_job(session, job_id, lock="update")
        if job.status == JobStatus.QUEUED:
            # no attempt runs it: it ends now, with what its checkpoint holds if it has run before
            cancel_between_attempts(session, job)
        elif job.status in JobStatus.CLAIMED:
            job.status, job.cancel_requested = JobStatus.CANCELLING, True
        else:
            raise ApiError(409, "job_finished", f"job {job_id} is already {job.status}", job_status=job.status)
        session.flush()
        body = job_json(job)  # the state this request left, whatever a worker does next
    resp = current_app.response_class(current_app.json.dumps(body), status=202, mimetype="application/json")
    resp.headers["Location"] = body["links"]["self"]
    return resp


@bp.post("/<job_id>/retry")
@doc("Run a failed or cancelled job again, as a new job", response=JobOut, status=202, errors=(404, 409),
     tag=TAG, description="The new job has the same spec and data, and `retry_of` naming this one; answers 202 "
                          "with its Location. 409 `job_not_retryable` unless this job failed or was cancelled; "
                          "409 `init_from_deleted` for a fine-tuned job whose parent was deleted.")
@idempotent
def retry_job(job_id: str):
    with ext()["sessions"].begin() as session:
        # a shared lock: a delete of this job (FOR UPDATE) waits until the new job that uses its
        # dataset is committed, or has gone before and this is a 404
        old = load_job(session, job_id, lock="share")
        if old.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
            raise ApiError(409, "job_not_retryable", f"job {job_id} is {old.status}; only failed or cancelled "
                           "jobs can be retried", job_status=old.status)
        if old.init_from is None and (old.fine_tuned_from or old.freeze):  # freeze: jobs from before 0004
            raise ApiError(409, "init_from_deleted", f"job {job_id} fine-tuned from job {old.fine_tuned_from or '?'}, "
                           "which has been deleted since: run again, it would start from random weights",
                           job_status=old.status)
        check_active_jobs(session, old.tenant)
        # what a submit of it would meet now: it may have run out of memory, or been accepted
        # before a limit was lowered or added
        samples = session.scalar(select(Dataset.n_samples).where(Dataset.id == old.dataset_id)) or 1
        net = shapes_only(old.model_spec)
        check_training_cost(net, samples, old.training_spec["batch_size"], old.total_epochs)
        storage = check_job_storage(session, old.tenant, net, old.training_spec)
        job = Job(tenant=old.tenant, dataset_id=old.dataset_id, model_spec=old.model_spec,
                  training_spec=old.training_spec, total_epochs=old.total_epochs, init_from=old.init_from,
                  fine_tuned_from=old.fine_tuned_from, freeze=old.freeze, class_labels=old.class_labels,
                  storage_bytes=storage, retry_of=old.id, status=JobStatus.QUEUED)
        session.add(job)
        session.flush()
        body = job_json(job)
    enqueue(job.id)
    return accepted(body)


@bp.delete("/<job_id>")
@doc("Delete a finished job with its history and weights", status=204, errors=(404, 409), tag=TAG,
     description="Its inline dataset goes too unless another job uses it. 409 `job_active` while it is queued, "
                 "running or cancelling (cancel it first), `job_registered` while it is a model version, "
                 "`job_in_use` while an active job fine-tunes from it.")
def delete_job(job_id: str):
    with ext()["sessions"].begin() as session:
        # lock the row, so a model registration or a retry cannot slip in between the checks and
        # the delete
        job = load_job(session, job_id, lock="delete")
        if job.status not in JobStatus.TERMINAL:
            raise ApiError(409, "job_active", f"job {job_id} is {job.status}; cancel it first",
                           job_status=job.status)
        heir = session.scalar(select(Job.id).where(Job.init_from == job_id, Job.status.in_(JobStatus.ACTIVE))
                              .limit(1))
        if heir:
            # until it finished, a job may (re)start from its parent's weights at any attempt
            raise ApiError(409, "job_in_use", f"job {heir} fine-tunes from job {job_id} and is still active; "
                           "delete this one once that job has finished", job_id=heir)
        registered = session.execute(
            select(RegisteredModel.name, ModelVersion.version).join(ModelVersion)
            .where(ModelVersion.job_id == job_id)).first()
        if registered:
            raise ApiError(409, "job_registered", f"job {job_id} is version {registered.version} of model "
                           f"{registered.name!r}")
        dataset = session.get(Dataset, job.dataset_id, options=[defer(Dataset.features), defer(Dataset.targets)])
        session.execute(delete(Job).where(Job.id == job_id))
        session.flush()
        still_used = session.scalar(select(func.count()).select_from(Job).where(Job.dataset_id == dataset.id))
        if dataset.source == "inline" and not still_used:
            session.delete(dataset)
    return Response(status=204)


@bp.get("/<job_id>/epochs")
@doc("Per-epoch history, paged; optionally downsampled", query=EpochQuery, response=EpochPage, errors=(404,),
     tag=TAG)
def get_epochs(job_id: str):
    q = parse_query(EpochQuery)
    with ext()["sessions"]() as session:
        load_job(session, job_id)
        after = (EpochRecord.job_id == job_id, EpochRecord.epoch > q.after)
        base = select(EpochRecord).where(*after)
        total = session.scalar(select(func.count(EpochRecord.epoch)).where(*after))  # from the index alone
        if q.max_points is not None:  # the whole curve, in at most max_points epochs: no paging
            downsampled, next_after = total > q.max_points, None
            if downsampled:
                # the epoch numbers first (one integer column), then only the chosen rows: reading
                # every row took 3-4 s and its JSON columns for a 100,000-epoch job
                numbers = list(session.scalars(select(EpochRecord.epoch).where(*after).order_by(EpochRecord.epoch)))
                base = base.where(EpochRecord.epoch.in_(evenly_spaced(numbers, q.max_points)))
            rows = list(session.scalars(base.order_by(EpochRecord.epoch)))
        else:
            rows = list(session.scalars(base.order_by(EpochRecord.epoch).limit(q.limit)))
            downsampled = False
            next_after = rows[-1].epoch if len(rows) == q.limit and total > q.limit else None
        return {"job_id": job_id, "epochs": [epoch_json(r) for r in rows], "total": total,
                "downsampled": downsampled, "next_after": next_after}


def epoch_json(r: EpochRecord) -> dict[str, Any]:
    return json_safe({"epoch": r.epoch, "loss": r.loss, **r.metrics, "duration": r.duration,
                   "grad_norms": r.grad_norms, "weight_norms": r.weight_norms})


def evenly_spaced(epochs: list[int], points: int) -> list[int]:
    """At most `points` of `epochs`, spread evenly over them, the first and last kept: a curve
    thinned for drawing (/epochs and /diagnostics with max_points)."""
    keep = np.unique(np.linspace(0, len(epochs) - 1, points).round().astype(int))
    return [epochs[i] for i in keep]


VANISHING_RATIO = 1e-3
EXPLODING_GROWTH = 100  # a norm this many times the run's largest first-epoch norm has exploded
LARGE_NORM = 1e3
RELU_FAMILY = ("relu", "leaky_relu", "elu", "gelu", "softplus")
SATURATING = ("sigmoid", "tanh")


@dataclass
class GradientHistory:
    """What the flags read of one layer's gradient norms over a whole run: the first and latest,
    and the first epoch where the norm overflowed or grew EXPLODING_GROWTH times the run's start
    (the largest layer's first-epoch norm). It is gathered a block of epochs at a time, so that
    a run of 100,000 epochs is read whole for its flags without ever being held whole."""

    first: float | None = None
    last: float | None = None
    overflowed: tuple[int, float] | None = None  # (epoch, norm)
    grew: tuple[int, float] | None = None

    def add(self, epochs: list[int], norms: np.ndarray, start: float) -> None:
        """The next epochs' norms, in order (an overflow as infinity). `start` is the largest
        finite first-epoch norm of any layer: a layer whose gradients start out vanishing (a
        deep sigmoid stack's first layers) and then grow to the others' size is recovering,
        not exploding, though its norm grows a hundredfold over its own start."""
        if not len(norms):
            return
        if self.first is None:
            self.first = float(norms[0])
        self.last = float(norms[-1])
        if self.overflowed is None:
            i = np.flatnonzero(~np.isfinite(norms))
            self.overflowed = (epochs[i[0]], float(norms[i[0]])) if len(i) else None
        if self.grew is None and start > 0:
            i = np.flatnonzero(norms >= EXPLODING_GROWTH * start)
            self.grew = (epochs[i[0]], float(norms[i[0]])) if len(i) else None

    @property
    def blown(self) -> tuple[int, float] | None:
        return self.overflowed or self.grew


def run_start(first_norms) -> float:
    """The scale the run's gradients started at: the largest finite first-epoch norm."""
    finite = [float(v) for v in first_norms if np.isfinite(v)]
    return max(finite, default=0.0)


def gradient_flags(layers: list[str], grads: dict[str, list[float]], epochs: list[int] | None = None,
                   activations: dict[str, str] | None = None, clip_norm: float | None = None,
                   diverged: str | None = None, penalties: dict[str, float] | None = None) -> list[dict[str, str]]:
    """`history_flags` from whole lists of norms per layer."""
    if not layers:
        return history_flags([], {}, diverged=diverged)
    epochs = epochs or list(range(1, 1 + max(len(grads[n]) for n in layers)))
    start = run_start(grads[n][0] for n in layers if grads[n])
    histories = {}
    for name in layers:
        histories[name] = GradientHistory()
        histories[name].add(epochs, np.asarray(grads[name], dtype=np.float64), start)
    return history_flags(layers, histories, activations, clip_norm, diverged, penalties)


def history_flags(layers: list[str], histories: dict[str, GradientHistory],
                  activations: dict[str, str] | None = None, clip_norm: float | None = None,
                  diverged: str | None = None, penalties: dict[str, float] | None = None) -> list[dict[str, str]]:
    """Plain-language warnings from the per-layer gradient norms (measured before clip_norm),
    `layers` in the network's order.

    Vanishing and missing gradients are read from the latest epoch. Explosions are read from the
    whole history, since a run can blow up early and then sit at zero, every relu dead: a norm
    that overflowed, or grew EXPLODING_GROWTH times over the run's start. A run that blew up
    within one epoch shows no growth between epochs (the norms are epoch means): `diverged`, the
    failed job's reason, says it instead, and the norms that blow-up left are not blamed on the
    data's scale. A norm that is only large, from the first epoch on, comes from the scale of the
    targets or inputs: that is said as such, since no learning rate or clipping would change it.
    `penalties`: per layer, what its l1/l2 penalty's gradient alone comes to (penalty_gradients):
    a norm that is about that is no gradient from the data, as a norm of 0 is without a penalty;
    a much smaller one is the data's gradient and the penalty's cancelling out, a converged fit."""
    flags = []
    if diverged:  # said even when no epoch was recorded: the first one diverged
        flags.append({"kind": "diverged", "message": f"training diverged: {diverged}. The gradients grew within "
                      "an epoch until the loss or the weights overflowed; the recorded norms are epoch means, "
                      "which hide that growth."})
    if not layers:
        return flags
    activations, penalties = activations or {}, penalties or {}
    last = {name: histories[name].last for name in layers if histories[name].last is not None}
    top = max((v for v in last.values() if np.isfinite(v)), default=0.0)  # an overflow is no yardstick
    start = run_start(histories[n].first for n in layers if histories[n].first is not None)
    # layers no gradient from the data reaches: a norm of 0, or what the penalty alone gives
    silent = {n for n, v in last.items() if v == 0 or _penalty_only(v, penalties.get(n, 0.0))}
    calm = (f"clip_norm ({clip_norm:g}) already clipped these steps; if the loss still climbs, lower the "
            "learning rate" if clip_norm else "Lower the learning rate or set training.clip_norm")
    for i, name in enumerate(layers):
        history, norm = histories[name], last.get(name)
        if norm is None:
            continue
        activation = activations.get(name)
        if history.blown is not None:
            epoch, g = history.blown
            size = f"{g:.2e}" if np.isfinite(g) else "beyond float range"
            grew = "" if not np.isfinite(g) else f", {g / start:.0f} times the largest layer's first-epoch norm"
            flags.append({"kind": "exploding_gradients", "layer": name,
                          "message": f"gradients exploded: layer {name}'s gradient norm reached {size} in epoch "
                                     f"{epoch}{grew}. {calm}."})
        elif norm > LARGE_NORM and not diverged:
            flags.append({"kind": "large_gradients", "layer": name,
                          "message": f"gradients are large but have not exploded: layer {name}'s gradient norm is "
                                     f"{norm:.2e}, within {EXPLODING_GROWTH} times the run's first epoch. Large "
                                     "norms like these come from the scale of the loss (targets or inputs in the "
                                     "thousands make a squared error in the millions); scaling them to about unit "
                                     "size makes the steps steadier and the learning rate easier to choose."})
        if name in silent:
            # the epoch norms cannot tell which of these it is, so each that can apply is said
            after = next((n for n in layers[i + 1:] if n in silent), None)
            before = next((n for n in reversed(layers[:i]) if n in silent), None)
            causes = []
            if activation == "relu":
                causes.append("its relu units may all output 0 for every sample (dead relus: lower the learning "
                              "rate, use leaky_relu or elu, or check the inputs' scale and the initialisation)")
            elif activation in SATURATING:
                causes.append(f"its {activation} units may be saturated (outputs at their limits, where the "
                              "derivative rounds to 0: lower the learning rate, or scale the inputs)")
            causes.append(f"layer {after}, after it, passes none back (it gets none either)" if after else
                          "a layer after it passes none back (dead relus there, for example), or the loss does "
                          "not depend on it")
            if before:
                causes.append(f"its inputs may all be 0 (layer {before}, before it, has no gradient either)")
            size = "is 0" if norm == 0 else f"({norm:.2e}) is what its l1/l2 penalty alone gives"
            flags.append({"kind": "no_gradient", "layer": name,
                          "message": f"no gradient from the data reaches layer {name}: its norm {size}, so the "
                                     "data no longer moves its weights (only the penalty, weight decay or "
                                     f"momentum still can). Possible causes: {'; or '.join(causes)}."})
        elif norm < VANISHING_RATIO * top:
            if activation == "relu":
                advice = ("Most of its units may be inactive for most samples (dying relus): lower the learning "
                          "rate, use leaky_relu or elu, or add batch_norm or residual blocks.")
            elif activation in RELU_FAMILY:
                advice = "Try batch_norm, residual blocks or he initialisation."
            else:
                advice = "Try relu-family activations, batch_norm, residual blocks or he initialisation."
            flags.append({"kind": "vanishing_gradients", "layer": name,
                          "message": f"gradients are vanishing: layer {name}'s gradient norm ({norm:.2e}) is under "
                                     f"{VANISHING_RATIO:g} of the largest layer's ({top:.2e}), so it barely learns. "
                                     + advice})
    return flags


# A gradient norm within this band of what the penalty alone gives is the penalty's alone: the
# estimate counts the biases' weights too (so a dead layer's norm can fall under it), and the
# weights shrink within an epoch (so its norms are of slightly larger weights than the last).
PENALTY_BAND = (0.5, 1.05)


def _penalty_only(norm: float, penalty: float) -> bool:
    return penalty > 0 and PENALTY_BAND[0] * penalty <= norm <= PENALTY_BAND[1] * penalty


def penalty_gradients(net: Network, weight_norms: dict[str, float | None]) -> dict[str, float]:
    """Per layer with an l1 or l2 penalty, what the penalty's gradient alone comes to: 2 l2 |W|
    + l1 sqrt(#W) over its kernels, |W| taken as the layer's whole weight norm at the last
    epoch. A layer whose units are all dead still gets this gradient, which hid them."""
    out = {}
    for layer in net.layers:
        l1, l2, norm = getattr(layer, "l1", 0.0), getattr(layer, "l2", 0.0), weight_norms.get(layer.name)
        if (l1 or l2) and norm is not None and math.isfinite(norm):
            kernels = sum(layer.params[key].size for key in layer.regularized)
            out[layer.name] = 2 * l2 * norm + l1 * math.sqrt(kernels)
    return out


# The norms /diagnostics answers with, per layer, unless ?max_points says otherwise: the flags
# read every epoch, the series are a thinned curve as /epochs?max_points gives (64 layers over
# 20,000 epochs were 52 MB of JSON). DIAGNOSTICS_MAX_VALUES bounds layers x epochs x 2 series
# for any max_points, however many layers a server allows.
DIAGNOSTICS_MAX_VALUES = 1_000_000
DIAGNOSTICS_BATCH = 2000  # epochs read at a time for the flags


@bp.get("/<job_id>/diagnostics")
@doc("Per-layer gradient and weight norms per epoch, with vanishing/exploding flags", query=DiagnosticsQuery,
     response=Diagnostics, errors=(404, 422), tag=TAG,
     description="The flags read every epoch of the run. The norms are given for at most `max_points` epochs "
                 f"(default {DIAGNOSTICS_POINTS}), spread over the run with the first and last kept, as "
                 "/epochs?max_points does; /epochs pages through every epoch's norms.")
def get_diagnostics(job_id: str):
    q = parse_query(DiagnosticsQuery)
    with ext()["sessions"]() as session:
        job = load_job(session, job_id)
        layers = [layer.get("name") for layer in job.model_spec["layers"]]
        first = session.scalars(select(EpochRecord.weight_norms).where(EpochRecord.job_id == job_id)
                                .order_by(EpochRecord.epoch).limit(1)).first()
        names = list(first) if first is not None else [n for n in layers if n]
        # the flags from every epoch, a block at a time and only the gradient norms (the whole
        # history as rows took +420 MB for 64 layers over 20,000 epochs); the epoch numbers are kept
        # to choose the epochs shown
        histories = {n: GradientHistory() for n in names}
        numbers: list[int] = []
        trainable: set[str] = set()
        zeros = [0.0] * len(names)  # a layer missing from an epoch's norms (frozen) has 0 there
        while True:
            block = session.execute(select(EpochRecord.epoch, EpochRecord.grad_norms)
                                    .where(EpochRecord.job_id == job_id,
                                           EpochRecord.epoch > (numbers[-1] if numbers else -1))
                                    .order_by(EpochRecord.epoch).limit(DIAGNOSTICS_BATCH)).all()
            if block:
                epochs = [r.epoch for r in block]
                for r in block:
                    trainable.update(r.grad_norms)
                # a norm stored as null overflowed: for the flags an infinite one (None reads as NaN)
                norms = np.array([list(map(r.grad_norms.get, names, zeros)) for r in block], dtype=np.float64)
                norms[np.isnan(norms)] = math.inf
                if not numbers:
                    start = run_start(norms[0])
                for i, n in enumerate(names):
                    histories[n].add(epochs, norms[:, i], start)
                numbers += epochs
            if len(block) < DIAGNOSTICS_BATCH:
                break
        total = len(numbers)
        points = _diagnostic_points(q, len(names), total)
        downsampled = total > points
        rows = []
        if numbers:
            stmt = select(EpochRecord.epoch, EpochRecord.grad_norms, EpochRecord.weight_norms).where(
                EpochRecord.job_id == job_id)
            if downsampled:
                stmt = stmt.where(EpochRecord.epoch.in_(evenly_spaced(numbers, points)))
            else:
                stmt = stmt.where(EpochRecord.epoch <= numbers[-1])  # not those recorded since
            rows = session.execute(stmt.order_by(EpochRecord.epoch)).all()
    # frozen layers record no gradient norm (null here); a trainable one whose norms are all 0
    # (every relu dead) is flagged
    trainable_names = [n for n in names if n in trainable]
    out_layers = [{"layer": n, "frozen": n not in trainable and bool(rows),
                   "grad_norms": ([math.inf if g is None else g for g in (r.grad_norms.get(n, 0.0) for r in rows)]
                                  if n in trainable else [None] * len(rows)),
                   "weight_norms": [r.weight_norms.get(n, 0.0) for r in rows]} for n in names]
    diverged = job.error if job.status == JobStatus.FAILED and "became non-finite" in (job.error or "") else None
    activations, penalties = {}, {}
    if numbers:
        net = shapes_only(job.model_spec)
        activations = {layer.name: layer.config.get("activation") for layer in net.layers}
        penalties = penalty_gradients(net, rows[-1].weight_norms) if rows else {}
    flags = history_flags(trainable_names, histories, activations, job.training_spec.get("clip_norm"), diverged,
                          penalties)
    return {"job_id": job_id, "epochs": [r.epoch for r in rows], "total": total, "downsampled": downsampled,
            "layers": json_safe(out_layers), "flags": flags}


def _diagnostic_points(q: DiagnosticsQuery, layers: int, recorded: int) -> int:
    """The epochs to answer with: max_points, within DIAGNOSTICS_MAX_VALUES norms. A max_points the
    caller chose past that is a 422 naming the most this job allows, unless the job has recorded
    few enough epochs to fit anyway; the default shrinks to fit."""
    fits = max(2, DIAGNOSTICS_MAX_VALUES // max(1, 2 * layers))
    if min(q.max_points, recorded) <= fits:
        return q.max_points
    if "max_points" in q.model_fields_set:
        raise validation_error([{"path": "max_points", "message": f"{q.max_points} epochs x {layers} layers x 2 "
                                 f"norms would be more than {DIAGNOSTICS_MAX_VALUES} values; at most {fits} "
                                 f"for this job"}])
    return fits


SSE_POLL_SECONDS = 0.5
SSE_MAX_SECONDS = 300  # one stream's lifetime; EventSource and our client resume after it
SSE_KEEPALIVE_SECONDS = 15
SSE_BATCH = 1000  # epochs read and sent at a time when a stream catches up


def _sse_event(name: str, data: Any, description: str) -> dict[str, Any]:
    return {"type": "object", "description": description, "required": ["event", "data"], "properties": {
        "event": {"const": name}, "id": {"type": "string"}, "retry": {"type": "integer"},
        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data}}}


LAST_EVENT_ID_PARAM = {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"},
                       "description": "sent by a reconnecting EventSource: the last epoch it received"}

# one event of the stream (OpenAPI 3.1: the schema of a text/event-stream describes each event)
SSE_EVENTS = {"text/event-stream": {"schema": {"oneOf": [
    _sse_event("epoch", EpochOut, "a finished epoch; its `id` is the epoch number"),
    _sse_event("status", {"anyOf": [JobOut, JobGone]},
               "the job whenever its status changes, first at once; the last is a terminal status "
               "(or `deleted`)"),
]}}}


@bp.get("/<job_id>/events")
@doc("Follow a job as Server-Sent Events: `epoch` and `status` events, ending with the terminal status",
     query=EventsQuery, errors=(404,), tag=TAG, raw_response=SSE_EVENTS, headers=(LAST_EVENT_ID_PARAM,),
     description="Every epoch once, in order, then the job at each status change; the stream ends after the "
                 "terminal status. A comment line is sent every few seconds while nothing happens. A client "
                 "that reconnects with `Last-Event-ID` (or `?after=N`) gets the epochs after that one.")
def job_events(job_id: str):
    q = parse_query(EventsQuery)
    sessions = ext()["sessions"]
    with sessions() as session:
        load_job(session, job_id)
    last_epoch = q.after
    if last_epoch is None:
        header = request.headers.get("Last-Event-ID", "")
        last_epoch = int(header) if re.fullmatch(r"[0-9]{1,9}", header) else 0  # ASCII digits only

    streams, tenant = ext()["streams"], current_tenant()
    if not streams.acquire(tenant):
        raise ApiError(503, "too_many_streams", "this API process is serving as many event streams as it has "
                       "threads to spare, or as many for you as one tenant may have; poll /epochs instead, or "
                       "try again", headers={"Retry-After": "5"})

    # The slot is given back when the response is closed, which the server does whether or not
    # the body was ever read: a HEAD request, or a client gone before the first byte, never starts
    # the generator, so its `finally` alone would keep the slot forever.
    give_back = threading.Lock()

    def release() -> None:
        if give_back.acquire(blocking=False):
            streams.release(tenant)

    def events():
        try:
            yield from follow()
        finally:
            release()

    def follow():
        nonlocal last_epoch
        last_status = None
        quiet_since = started = time.monotonic()
        yield "retry: 2000\n\n"
        while True:
            with sessions() as session:
                if not key_still_valid(session):
                    return  # revoked: the client's reconnection gets the 401
                job = session.get(Job, job_id)
                if job is None:
                    yield _sse("status", {"id": job_id, "status": "deleted"})
                    return
                # a long history is caught up SSE_BATCH epochs at a time (all at once took 27 MB
                # and 5 s for 100,000 epochs); the status comes once the epochs are all sent
                rows = list(session.scalars(select(EpochRecord).where(
                    EpochRecord.job_id == job_id, EpochRecord.epoch > last_epoch).order_by(EpochRecord.epoch)
                    .limit(SSE_BATCH)))
                snapshot = job_json(job) if len(rows) < SSE_BATCH else None
            for r in rows:
                last_epoch = r.epoch
                yield _sse("epoch", epoch_json(r), ident=str(r.epoch))
            if snapshot is None:
                continue  # more epochs are waiting: no pause
            if snapshot["status"] != last_status:
                last_status = snapshot["status"]
                yield _sse("status", snapshot)
            if last_status in JobStatus.TERMINAL:
                return
            if time.monotonic() - started > SSE_MAX_SECONDS:
                return  # give the thread back; the client reconnects with Last-Event-ID and goes on
            if rows:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= SSE_KEEPALIVE_SECONDS:
                # a write is how a closed connection is noticed: the stream then stops polling
                yield ": keep-alive\n\n"
                quiet_since = time.monotonic()
            time.sleep(SSE_POLL_SECONDS)

    response = Response(stream_with_context(events()), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.call_on_close(release)
    return response


def _sse(event: str, data: dict[str, Any], ident: str | None = None) -> str:
    head = f"id: {ident}\n" if ident else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def no_weights(job: Job, errors: list[dict[str, str]] | None = None) -> ApiError:
    """409 for a job without stored weights: one still training, or one that ended with none (it
    failed, or was cancelled before its first epoch ended)."""
    if job.status in JobStatus.TERMINAL:
        return ApiError(409, "no_weights", f"job {job.id} is {job.status} and stored no weights (a job keeps "
                        "weights when it succeeds, or when it is cancelled after an epoch)", errors,
                        job_status=job.status)
    return ApiError(409, "job_not_finished", f"job {job.id} is {job.status}; weights are stored when training "
                    "ends", errors, job_status=job.status)


# A JSON answer holds every weight as decimal text (about 20 bytes a value) and, while it is
# made, as a Python float in a list (about 100 bytes a value in all): a job's 16.8 million
# values made 359 MB of JSON and a 1.6 GB peak on a web thread, three at once 3.2 GB. Past this
# many values the JSON form is refused for ?format=npz (4 or 8 bytes a value, one array at a
# time). 2,000,000 is what a predict answer may hold (BACKPROP_MAX_PREDICT_VALUES' default):
# about 40 MB of JSON and 200 MB while it is made, and room for a dense 1000 x 2000 model.
MAX_JSON_WEIGHT_VALUES = 2_000_000


@bp.get("/<job_id>/weights")
@doc("Learned weights per layer, as JSON or (?format=npz) a NumPy .npz file", query=WeightsQuery,
     response=WeightsOut, errors=(404, 409, 422), tag=TAG,
     description=f"JSON holds at most {MAX_JSON_WEIGHT_VALUES:,} values (422 `response_too_large` past that, "
                 "with the count); the .npz has no such limit and is sent one array at a time.")
def get_weights(job_id: str):
    q = parse_query(WeightsQuery)
    sessions = ext()["sessions"]
    with sessions() as session:
        job = load_job(session, job_id)
        layout = weight_layout(session, job.id)  # the sizes first: nothing is read that would be refused
        if not layout:
            raise no_weights(job)
        names = list(in_network_order(job.model_spec, layout))
        if q.format == "npz":
            body, size = _npz_stream(sessions, job_id, [(name, *layout[name]) for name in names])
            return Response(body, mimetype="application/octet-stream", headers={
                "Content-Length": str(size), "Content-Disposition": f"attachment; filename=job-{job_id}-weights.npz"})
        values = sum(math.prod(shape) for _dtype, shape in layout.values())
        if values > MAX_JSON_WEIGHT_VALUES:
            message = (f"the weights hold {values} values; a JSON answer may hold at most {MAX_JSON_WEIGHT_VALUES}: "
                       "download them as ?format=npz")
            raise ApiError(422, "response_too_large", f"format: {message}",
                           errors=[{"path": "format", "message": message}], values=values,
                           limit=MAX_JSON_WEIGHT_VALUES)
        weights = load_weights(session, job.id)
    if not weights:  # deleted since the shapes were read
        raise no_weights(job)
    return {"job_id": job_id, "status": job.status, "weights": [
        {"name": name, "layer": name.rsplit("/", 1)[0], "param": name.rsplit("/", 1)[1],
         "dtype": weights[name].dtype.name, "shape": list(weights[name].shape), "values": weights[name].tolist()}
        for name in names if name in weights]}


class _Parts:
    """A write-only file that keeps what is written until it is taken to be sent (or, with
    `keep=False`, only counts it). zipfile writes to a file it cannot seek with each member's
    sizes and CRC after its data (a data descriptor), so an archive can be sent while it is made."""

    def __init__(self, keep: bool = True):
        self.parts: list[bytes] = []
        self.keep, self.written = keep, 0

    def write(self, data) -> int:
        size = len(data)
        self.written += size
        if self.keep:
            self.parts.append(bytes(data))
        return size

    def flush(self) -> None:
        pass

    def take(self) -> list[bytes]:
        parts, self.parts = self.parts, []
        return parts


def _npy_header(dtype: str, shape: list[int]) -> bytes:
    """What np.save writes before an array's bytes."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": tuple(shape)})
    return out.getvalue()


def _write_npz(sink: _Parts, members: list[tuple[str, bytes, int]], data: Callable[[str, int], Iterator]):
    """Writes the .npz of `members` (name, .npy header, byte count) to `sink`, yielding after each
    member and after the central directory; `data(name, count)` gives a member's array bytes."""
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, header, count in members:
            info = zipfile.ZipInfo(f"{name}.npy")  # a fixed timestamp: equal weights, equal bytes
            info.file_size = len(header) + count  # past 2 GB it needs ZIP64, chosen from this
            with archive.open(info, "w") as member:
                member.write(header)
                for chunk in data(name, count):
                    member.write(chunk)
            yield
    yield


_ZEROS = bytes(1 << 20)


def _npz_stream(sessions, job_id: str, arrays: list[tuple[str, str, tuple[int, ...]]]) -> tuple[Iterator[bytes], int]:
    """The .npz that np.load reads, and its size: one array read from the database and sent at a
    time, its stored bytes as they are (no copy, no Python numbers; a 16.8M-value model held all
    of its arrays three times over when the archive was built whole). The size, for the
    Content-Length, comes from writing the same archive with zeros to a counter: a client, or a
    proxy speaking HTTP/1.0, can then tell a download cut short (the job deleted meanwhile) from
    a whole one. `arrays`: (name, dtype, shape) of each, in the archive's order."""
    members = []
    for name, dtype, shape in arrays:
        if dtype not in ARRAY_DTYPES:
            raise RuntimeError(f"weight {name} of job {job_id} has dtype {dtype!r}")
        members.append((name, _npy_header(dtype, shape), math.prod(shape) * np.dtype(dtype).itemsize))

    def zeros(_name: str, count: int) -> Iterator[memoryview]:
        for at in range(0, count, len(_ZEROS)):
            yield memoryview(_ZEROS)[:min(len(_ZEROS), count - at)]

    def stored(name: str, count: int) -> Iterator[bytes]:
        with sessions() as session:
            row = session.execute(select(WeightArray.data).where(WeightArray.job_id == job_id,
                                                                 WeightArray.name == name)).first()
        if row is None or len(row.data) != count:
            raise RuntimeError(f"weight {name} of job {job_id} is gone or changed: download cut short")
        yield row.data

    counter = _Parts(keep=False)
    for _ in _write_npz(counter, members, zeros):
        pass

    def send() -> Iterator[bytes]:
        sink = _Parts()
        for _ in _write_npz(sink, members, stored):
            yield from sink.take()

    return send(), counter.written


def in_network_order(spec: dict[str, Any], weights: dict[str, Any]) -> dict[str, Any]:
    """The database gives weights sorted by name (dense_10 before dense_2, batch_norm_0 before
    dense_0): they are answered layer by layer, as the network runs, and as a learner reads them."""
    net = shapes_only(spec)
    layer_at = {layer.name: i for i, layer in enumerate(net.layers)}
    param_at = {name: i for i, name in enumerate({**net.params(), **net.buffers()})}

    def position(name: str) -> tuple[int, int, str]:
        return layer_at.get(name.split("/")[0], len(layer_at)), param_at.get(name, len(param_at)), name

    return {name: weights[name] for name in sorted(weights, key=position)}


@bp.post("/<job_id>/predict")
@doc("Predict with a finished job's weights", body=PredictRequest, response=PredictOut, errors=(404, 409), tag=TAG,
     description="A succeeded job, or one cancelled (or stopped by the time limit) after an epoch, with the weights "
                 "it kept, as `init_from` and the weights route take them. 409 `job_not_finished` while it "
                 "trains, `no_weights` when it ended with none.")
def predict_job(job_id: str):
    body = parse(PredictRequest, read_json_body())
    with ext()["sessions"]() as session:
        job = load_job(session, job_id)
        # a run cancelled once it was good enough is served as it is fine-tuned from: its weights
        # (looked for only when the model is not cached: a cached one has them)
        models = ext()["models"]
        if job.status not in JobStatus.TERMINAL or (job.id not in models and not weight_shapes(session, job.id)):
            raise no_weights(job)
        model = models.get(session, job)
    return {**answer(model, body), "job_id": job_id}
