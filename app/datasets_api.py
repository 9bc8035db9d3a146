"""/v1/datasets: store a dataset once (JSON, CSV, or NumPy .npz/.npy) and train any number of
jobs on it with `dataset_id`; list, read and delete datasets. Responses describe a dataset
(shape, dtype, targets, class counts, checksum), never its data."""

from __future__ import annotations

import codecs
from typing import Any

from flask import Blueprint, Response, current_app, request, url_for
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import defer

from core.db import Dataset, Job, JobStatus
from core.store import create_dataset

from .auth import current_tenant
from .datasets import (
    features_array,
    file_kind,
    hold_slot_to_decode,
    load_npy,
    load_npz,
    not_found,
    numeric_array,
    parse_csv,
    parse_targets,
    prepare_dataset,
    targets_array,
)
from .errors import ApiError, validation_error
from .idempotency import idempotent
from .jobs import ext
from .limits import check_dataset_storage
from .openapi import doc, parse_query
from .pagination import iso, newest_first, page
from .schemas import (
    MAX_DATASET_NAME,
    DatasetJsonCreate,
    DatasetListQuery,
    DatasetOut,
    DatasetPage,
    DatasetUploadParams,
    parse,
    read_json_body,
    whole_body,
)

bp = Blueprint("datasets", __name__, url_prefix="/v1/datasets")
TAG = "datasets"
CSV_TYPES = ("text/csv", "application/csv")
# a compressed .npz may inflate to at most this many times the request size limit
NPZ_INFLATE_FACTOR = 4


def dataset_json(ds: Dataset) -> dict[str, Any]:
    return {
        "id": ds.id, "name": ds.name, "source": ds.source, "created_at": iso(ds.created_at),
        "n_samples": ds.n_samples, "shape": [ds.n_samples, *ds.feature_shape], "feature_shape": ds.feature_shape,
        "dtype": ds.feature_dtype, "feature_names": ds.feature_names, "target_kind": ds.target_kind,
        "target_shape": ds.target_shape, "target_dtype": ds.target_dtype, "class_labels": ds.class_labels,
        "class_counts": ds.class_counts, "checksum": ds.checksum,
        "links": {"self": url_for("datasets.get_dataset", dataset_id=ds.id),
                  "jobs": url_for("jobs.list_jobs", dataset_id=ds.id)},
    }


def described():
    """Datasets without their arrays: listing and reading never load the data."""
    return select(Dataset).options(defer(Dataset.features), defer(Dataset.targets))


def load_dataset(session, dataset_id: str, lock: bool = False) -> Dataset:
    """The caller's dataset; another tenant's looks exactly like a missing one."""
    stmt = described().where(Dataset.id == dataset_id, Dataset.tenant == current_tenant())
    ds = session.scalars(stmt.with_for_update() if lock else stmt).first()
    if ds is None:
        raise not_found("dataset", dataset_id)
    return ds


UPLOAD_BODY = {
    "application/json": {"schema": DatasetJsonCreate.model_json_schema()},
    "multipart/form-data": {
        "schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "contentMediaType": "application/octet-stream",
                     "description": "a CSV with a header row (name the target column with `target`), a .npz "
                                    "with arrays `features` and `targets`, or a .npy of features"},
            "targets": {"type": "string", "contentMediaType": "application/octet-stream",
                        "description": "with a .npy `file` only: the targets as a second .npy"},
            **DatasetUploadParams.model_json_schema()["properties"]}},
    },
    "text/csv": {"schema": {"type": "string", "description": "CSV with a header row; name the target column "
                                                             "with ?target=COLUMN"}},
}


@bp.post("")
@doc("Store a dataset", query=DatasetUploadParams, response=DatasetOut, status=201, errors=(409,), tag=TAG,
     raw_body=UPLOAD_BODY, description="""\
Stores a dataset once; submit any number of jobs with its id (`dataset_id` in POST /v1/jobs). \
Answers 201 with a Location. Three ways to send it:

* **JSON** (`application/json`): `features` (one row per sample; nested lists for images `(n, h, w, c)` or \
sequences `(n, steps, features)` - the per-sample shape is kept), `targets`, optional `feature_names`, \
`name`, `task`.
* **CSV**: `multipart/form-data` with a `file` part, or a raw `text/csv` body. The first row is the header; \
`target` (query parameter or form field) names the target column, every other column is a numeric feature. \
Errors name the line number (the header is line 1) and the column.
* **NumPy**: `multipart/form-data` whose `file` is a `.npz` holding arrays `features` and `targets` \
(or `x` and `y`), optionally `feature_names` (strings); or a `.npy` of features in `file` plus a second \
`.npy` part named `targets`. Only numeric arrays are accepted (and string arrays for class labels); \
arrays of Python objects are refused with 422 and never unpickled. The format is recognised by the \
file's content, not its name.

Targets may be class labels (strings; mapped to indices, and predictions answer with the labels), class \
indices, one-hot rows, or values. Whole numbers >= 0 in one column are classes unless `task=regression`; \
`task=labels` takes numbers as the names of classes (wine's 1, 2, 3: mapped in sorted order, as strings are); \
a classification dataset needs at least two classes. Uploads are bounded by the request size limit (413).""")
@idempotent
def create_dataset_view():
    if request.is_json:
        fields, name, source = _from_json()
    elif request.mimetype == "multipart/form-data":
        fields, name, source = _from_multipart()
    elif request.mimetype in CSV_TYPES:
        fields, name, source = _from_raw_csv()
    else:
        raise ApiError(415, "unsupported_media_type", "send application/json, multipart/form-data or text/csv "
                       f"(got {request.mimetype or 'none'})")
    with ext()["sessions"].begin() as session:
        check_dataset_storage(session, current_tenant(), fields["features"].nbytes + fields["targets"].nbytes)
        ds = create_dataset(session, **fields, tenant=current_tenant(), name=name, source=source)
        body = dataset_json(ds)
    resp = current_app.response_class(current_app.json.dumps(body), status=201, mimetype="application/json")
    resp.headers["Location"] = body["links"]["self"]
    return resp


def _from_json() -> tuple[dict[str, Any], str | None, str]:
    params = parse_query(DatasetUploadParams)
    if params.target is not None:
        raise validation_error([{"path": "target", "message": "names a CSV column; a JSON body gives `targets`"}])
    body = parse(DatasetJsonCreate, read_json_body())
    features = numeric_array(body.features, "features", min_ndim=2)
    features = features_array(features, "features")
    targets, labels = parse_targets(body.targets, "targets")
    fields = prepare_dataset(features, targets, labels, body.feature_names, body.task or params.task)
    return fields, body.name or params.name, "json"


def _csv_text(data: bytes, part: str, charset: str = "utf-8") -> str:
    try:
        text = data.decode("utf-8-sig" if codecs.lookup(charset).name == "utf-8" else charset)
    except (ValueError, LookupError):  # the client's charset: UnicodeError (a ValueError) from any codec,
        # LookupError for an unknown or non-text one, ValueError for a name holding NUL
        raise validation_error([{"path": part, "message": f"is not {charset:.60} text; send CSV, a .npz or a "
                                                          ".npy"}]) from None
    if "\x00" in text:  # not text; and PostgreSQL could not store a header or label holding one
        raise validation_error([{"path": part, "message": "contains NUL characters; send CSV text, a .npz or a .npy"}])
    return text


def _from_raw_csv() -> tuple[dict[str, Any], str | None, str]:
    params = parse_query(DatasetUploadParams)
    text = _csv_text(whole_body(), "body", request.mimetype_params.get("charset", "utf-8"))
    x, y, labels, names = parse_csv(text, params.target, params.task, "body")
    return prepare_dataset(x, y, labels, names, params.task), params.name, "csv"


def _from_multipart() -> tuple[dict[str, Any], str | None, str]:
    if None in request.form or None in request.files:  # name="a\\" reads as no name at all
        raise validation_error([{"path": "body", "message": "a multipart part has no usable name (name=\"...\")"}])
    for key in ("file", "targets"):
        if len(request.files.getlist(key)) > 1:
            raise validation_error([{"path": key, "message": f"{len(request.files.getlist(key))} parts named "
                                                             f"{key}; send one"}])
    both = sorted(set(request.args) & set(request.form))
    if both:  # which one would win is nobody's guess
        raise validation_error([{"path": both[0], "message": "given both in the query string and in the form"}])
    if "file" not in request.files:
        hint = " as a file (curl -F file=@data.csv)" if "file" in request.form else ""
        raise validation_error([{"path": "file", "message": f"send the dataset in a multipart part named file{hint}"}])
    extra = sorted(set(request.files) - {"file", "targets"})
    if extra:
        raise validation_error([{"path": extra[0], "message": "unknown file part; expected file (and targets)"}])
    names = [(k, f.filename or "") for k, f in request.files.items(multi=True)]
    for key, value in [*request.form.items(multi=True), *names]:
        if "\x00" in key or "\x00" in value:  # PostgreSQL text cannot hold NUL
            raise validation_error([{"path": key.replace("\x00", "\\0"),
                                     "message": "must not contain NUL characters (in the field or its file name)"}])
    params = parse(DatasetUploadParams, {**request.args.to_dict(), **request.form.to_dict()})
    upload = request.files["file"]
    data = upload.read()
    kind = file_kind(data)
    name = params.name or upload.filename or None
    if params.name is None and name is not None and len(name) > MAX_DATASET_NAME:
        raise validation_error([{"path": "name", "message": f"defaults to the file name, which has {len(name)} "
                                 f"characters; a name may have at most {MAX_DATASET_NAME}: pass a shorter name"}])
    if kind != "npy" and "targets" in request.files:
        raise validation_error([{"path": "targets", "message": "a separate targets part only goes with a .npy "
                                                               "file of features"}])
    if kind != "csv" and params.target is not None:
        raise validation_error([{"path": "target", "message": f"names a CSV column; this file is a .{kind}"}])
    if kind == "csv":
        x, y, labels, names = parse_csv(_csv_text(data, "file"), params.target, params.task, "file")
        return prepare_dataset(x, y, labels, names, params.task), name, "csv"
    if kind == "npz":
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        arrays = load_npz(data, limit and limit * NPZ_INFLATE_FACTOR)
        paths = ("features", "targets")
        feature_names = arrays.get("feature_names")
        if feature_names is not None:
            if feature_names.dtype.kind != "U" or feature_names.ndim != 1:
                raise validation_error([{"path": "feature_names", "message": "must be a 1-D array of strings, got "
                                                                             f"{feature_names.dtype} with shape "
                                                                             f"{list(feature_names.shape)}"}])
            feature_names = feature_names.tolist()
    else:
        if "targets" not in request.files:
            raise validation_error([{"path": "targets", "message": "a .npy file holds only the features: send the "
                                     "targets as a second .npy part named targets, or upload one .npz with arrays "
                                     "features and targets"}])
        targets_data = request.files["targets"].read()
        if file_kind(targets_data) != "npy":
            raise validation_error([{"path": "targets", "message": "must be a .npy array"}])
        hold_slot_to_decode(len(data) + len(targets_data))  # a .npy is as large as its array
        arrays = {"features": load_npy(data, "file", key="features"),
                  "targets": load_npy(targets_data, "targets", key="targets")}
        paths, feature_names = ("file", "targets"), None
    features = features_array(arrays["features"], paths[0])
    targets, labels = targets_array(arrays["targets"], paths[1])
    return prepare_dataset(features, targets, labels, feature_names, params.task, paths), name, kind


@bp.get("")
@doc("List datasets, newest first", query=DatasetListQuery, response=DatasetPage, tag=TAG)
def list_datasets():
    q = parse_query(DatasetListQuery)
    stmt = newest_first(described().where(Dataset.tenant == current_tenant()), Dataset, q.limit, q.next)
    with ext()["sessions"]() as session:
        shown, next_cursor = page(list(session.scalars(stmt)), q.limit)
        return {"datasets": [dataset_json(ds) for ds in shown], "next": next_cursor}


@bp.get("/<dataset_id>")
@doc("Describe a dataset: shape, dtype, feature names, targets, class counts, checksum", response=DatasetOut,
     errors=(404,), tag=TAG)
def get_dataset(dataset_id: str):
    with ext()["sessions"]() as session:
        return dataset_json(load_dataset(session, dataset_id))


@bp.delete("/<dataset_id>")
@doc("Delete a dataset no job uses", status=204, errors=(404, 409), tag=TAG)
def delete_dataset(dataset_id: str):
    """Deletes the dataset when no job references it (204). Otherwise 409, naming the count:
    `dataset_in_use` while any of its jobs is queued, running or cancelling, and
    `dataset_referenced` while finished jobs remain. Finished jobs keep their dataset because
    they still need it: predictions answer with its class labels, and retry trains on it again
    (and jobs.dataset_id cannot be null). Delete those jobs first (DELETE /v1/jobs/{id}); a
    dataset uploaded here is not deleted with its last job, only datasets sent inline with a
    job are."""
    try:
        with ext()["sessions"].begin() as session:
            ds = load_dataset(session, dataset_id, lock=True)
            by_status = dict(session.execute(select(Job.status, func.count()).where(Job.dataset_id == ds.id)
                                             .group_by(Job.status)).all())
            total = sum(by_status.values())
            active = sum(by_status.get(s, 0) for s in JobStatus.ACTIVE)
            if active:
                them = "it" if active == 1 else "them"
                raise ApiError(409, "dataset_in_use", f"dataset {dataset_id} is used by {_jobs(active)} still queued "
                               f"or running; cancel {them}, then delete {them}", jobs=total, active_jobs=active)
            if total:
                raise ApiError(409, "dataset_referenced", f"dataset {dataset_id} is referenced by {_jobs(total)} "
                               "(finished), which keep it for predictions and retries; delete those jobs first",
                               jobs=total, active_jobs=0)
            session.delete(ds)
    except IntegrityError:  # a job was submitted with this dataset in the meantime
        raise ApiError(409, "dataset_in_use", f"dataset {dataset_id} was just given to a new job") from None
    return Response(status=204)


def _jobs(n: int) -> str:
    return f"{n} job" + ("" if n == 1 else "s")
