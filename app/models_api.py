"""/v1/models: a registry of named models in MLflow's manner. Registering a succeeded job makes
it the next version (1, 2, 3, ...) of a name; aliases name versions (`latest` always points at
the newest, others such as `production` are moved by hand); predictions are served by name,
version or alias from the same in-memory cache as a job's own predict."""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import Blueprint, Response, current_app, url_for
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from core.db import Job, JobStatus, ModelAlias, ModelVersion, RegisteredModel

from .auth import current_tenant
from .errors import ApiError, validation_error
from .idempotency import idempotent
from .jobs import ext, load_job
from .openapi import doc, parse_query
from .pagination import iso
from .predict import answer
from .schemas import (
    ALIAS_PATTERN,
    MODEL_NAME_PATTERN,
    AliasOut,
    AliasSet,
    ModelListQuery,
    ModelOut,
    ModelPage,
    ModelRegister,
    ModelVersionOut,
    PredictOut,
    PredictRequest,
    parse,
    read_json_body,
)

log = logging.getLogger(__name__)
bp = Blueprint("models", __name__, url_prefix="/v1/models")
TAG = "models"
LATEST = "latest"


# --- names and lookups ---

def check_name(name: str, path: str = "name") -> None:
    if not re.fullmatch(MODEL_NAME_PATTERN, name) or name in (".", ".."):
        raise validation_error([{"path": path, "message": "must be 1-128 characters of A-Z a-z 0-9 _ . - "
                                                          f"(and not . or ..), got {name!r:.140}"}])


def check_alias(alias: str, path: str = "alias") -> None:
    if alias.lower() == LATEST:
        raise validation_error([{"path": path, "message": "`latest` is reserved: it always points at the newest "
                                                          "version and cannot be set or removed"}])
    if not re.fullmatch(ALIAS_PATTERN, alias):
        raise validation_error([{"path": path, "message": "must be 1-64 characters of A-Z a-z 0-9 _ -, "
                                                          f"got {alias!r:.80}"}])


def model_not_found(name: str) -> ApiError:
    return ApiError(404, "model_not_found", f"no model named {name!r}")


def _by_name(name: str):
    return RegisteredModel.tenant == current_tenant(), RegisteredModel.name == name


def load_model(session, name: str) -> RegisteredModel:
    """The caller's model; another tenant's looks exactly like a missing one."""
    model = session.scalar(select(RegisteredModel).where(*_by_name(name)))
    if model is None:
        raise model_not_found(name)
    return model


def lock_model(session, name: str) -> RegisteredModel | None:
    """The caller's model row, locked until the transaction ends, so that concurrent writers to
    one model (registrations, alias moves) take turns. PostgreSQL: SELECT ... FOR UPDATE.
    SQLite has no row locks and its driver only opens a transaction at the first write, so two
    registrations could both read the same highest version before either writes; a write that
    changes nothing takes SQLite's database write lock first, and the reads after it are current."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(RegisteredModel).where(*_by_name(name)).values(name=RegisteredModel.name)
                        .execution_options(synchronize_session=False))
    return session.scalar(select(RegisteredModel).where(*_by_name(name)).with_for_update())


def latest_version(session, model_id: int) -> int | None:
    return session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model_id))


def load_version(session, model: RegisteredModel, version: str | int) -> ModelVersion:
    if isinstance(version, int):
        number = version
    else:  # ASCII digits only (int() takes "²"-like characters otherwise), small enough for the column
        number = int(version) if re.fullmatch(r"[0-9]{1,9}", version) else None
    found = session.get(ModelVersion, (model.id, number)) if number else None
    if found is None:
        raise ApiError(404, "version_not_found", f"model {model.name!r} has no version {str(version)!r:.40}",
                       latest_version=latest_version(session, model.id))
    return found


def alias_map(session, model_id: int) -> dict[str, int]:
    """alias -> version, `latest` first, then the others by name."""
    rows = session.execute(select(ModelAlias.alias, ModelAlias.version).where(ModelAlias.model_id == model_id)
                           .order_by(ModelAlias.alias)).all()
    latest = latest_version(session, model_id)
    return {**({LATEST: latest} if latest is not None else {}), **{a: v for a, v in rows}}


def resolve_alias(session, model: RegisteredModel, alias: str) -> ModelVersion:
    version = alias_map(session, model.id).get(alias)
    if version is None:
        raise ApiError(404, "alias_not_found", f"model {model.name!r} has no alias {alias!r:.80}")
    return session.get(ModelVersion, (model.id, version))


# --- documents ---

def version_json(name: str, mv: ModelVersion, job_status: str, metrics: dict[str, Any] | None,
                 aliases: dict[str, int]) -> dict[str, Any]:
    return {
        "model": name, "version": mv.version, "job_id": mv.job_id, "created_at": iso(mv.created_at),
        "aliases": [a for a, v in aliases.items() if v == mv.version],
        "job_status": job_status, "metrics": metrics,
        "links": {"self": url_for("models.get_version", name=name, version=mv.version),
                  "job": url_for("jobs.get_job", job_id=mv.job_id),
                  "predict": url_for("models.predict_version", name=name, version=mv.version)},
    }


def model_links(name: str) -> dict[str, str]:
    return {"self": url_for("models.get_model", name=name), "predict": url_for("models.predict_model", name=name)}


def _versions_with_jobs(session, where) -> list[tuple[ModelVersion, str, dict[str, Any] | None]]:
    return [tuple(row) for row in session.execute(
        select(ModelVersion, Job.status, Job.metrics).join(Job, Job.id == ModelVersion.job_id).where(where)
        .order_by(ModelVersion.model_id, ModelVersion.version))]


def one_version_json(session, model: RegisteredModel, mv: ModelVersion) -> dict[str, Any]:
    job = session.get(Job, mv.job_id)
    return version_json(model.name, mv, job.status, job.metrics, alias_map(session, model.id))


def created(body: dict[str, Any], location: str) -> Response:
    resp = current_app.response_class(current_app.json.dumps(body), status=201, mimetype="application/json")
    resp.headers["Location"] = location
    return resp


# --- registry ---

def next_version(session, model_id: int) -> int:
    return (latest_version(session, model_id) or 0) + 1


def _register_once(body: ModelRegister) -> dict[str, Any]:
    with ext()["sessions"].begin() as session:
        model = lock_model(session, body.name)
        job = load_job(session, body.job_id)
        if job.status != JobStatus.SUCCEEDED:
            # a job that ended otherwise has finished: it can be predicted with, not registered
            code = "job_not_succeeded" if job.status in JobStatus.TERMINAL else "job_not_finished"
            raise ApiError(409, code, f"job {job.id} is {job.status}; only a succeeded job can be registered",
                           job_status=job.status)
        if model is None:
            # a concurrent first registration of this name fails the (tenant, name) unique constraint
            model = RegisteredModel(tenant=current_tenant(), name=body.name)
            session.add(model)
            session.flush()
        version = next_version(session, model.id)
        # the (model_id, version) primary key refuses a second version N should a writer slip past the lock
        session.add(ModelVersion(model_id=model.id, version=version, job_id=job.id))
        session.flush()
        for alias in dict.fromkeys(body.aliases):
            session.merge(ModelAlias(model_id=model.id, alias=alias, version=version))
        session.flush()
        mv = session.get(ModelVersion, (model.id, version))
        return version_json(model.name, mv, job.status, job.metrics, alias_map(session, model.id))


@bp.post("")
@doc("Register a succeeded job as the next version of a named model", body=ModelRegister,
     response=ModelVersionOut, status=201, errors=(404, 409), tag=TAG,
     description="Creates the model on its first registration. Versions are numbered 1, 2, 3, ... per "
                 "model; `latest` points at the newest at once, and the optional `aliases` are moved to the "
                 "new version in the same transaction. Registering the same job twice makes two versions. "
                 "Answers 201 with a Location. 404 `job_not_found` for an unknown job (or another tenant's), "
                 "409 `job_not_finished` while the job trains, `job_not_succeeded` when it failed or was "
                 "cancelled. Send an Idempotency-Key to retry safely.")
@idempotent
def register_model():
    body = parse(ModelRegister, read_json_body())
    check_name(body.name)
    for i, alias in enumerate(body.aliases):
        check_alias(alias, f"aliases[{i}]")
    try:
        out = _register_once(body)
    except IntegrityError:
        # lost a race (two first registrations of the name, or a job deleted meanwhile): once more,
        # now that the winner has committed
        log.info("registration of model %r raced another writer; retrying", body.name)
        try:
            out = _register_once(body)
        except IntegrityError:
            raise ApiError(409, "registration_conflict", f"model {body.name!r} is being changed concurrently; "
                           "try again", headers={"Retry-After": "1"}) from None
    log.info("model %r version %d registered from job %s", body.name, out["version"], body.job_id)
    return created(out, out["links"]["self"])


@bp.get("")
@doc("List your models, by name, each with its latest version and aliases", query=ModelListQuery,
     response=ModelPage, tag=TAG)
def list_models():
    q = parse_query(ModelListQuery)
    stmt = select(RegisteredModel).where(RegisteredModel.tenant == current_tenant())
    if q.next:
        stmt = stmt.where(RegisteredModel.name > q.next)
    stmt = stmt.order_by(RegisteredModel.name).limit(q.limit + 1)
    with ext()["sessions"]() as session:
        found = list(session.scalars(stmt))
        page = found[:q.limit]
        ids = [m.id for m in page]
        newest = (select(ModelVersion.model_id, func.max(ModelVersion.version).label("v"))
                  .where(ModelVersion.model_id.in_(ids)).group_by(ModelVersion.model_id).subquery())
        latest = {mv.model_id: (mv, status, metrics) for mv, status, metrics in session.execute(
            select(ModelVersion, Job.status, Job.metrics).join(Job, Job.id == ModelVersion.job_id)
            .join(newest, (newest.c.model_id == ModelVersion.model_id) & (newest.c.v == ModelVersion.version)))}
        aliases: dict[int, dict[str, int]] = {i: {} for i in ids}
        for model_id, alias, version in session.execute(
                select(ModelAlias.model_id, ModelAlias.alias, ModelAlias.version)
                .where(ModelAlias.model_id.in_(ids)).order_by(ModelAlias.alias)):
            aliases[model_id][alias] = version
        out = []
        for m in page:
            if m.id not in latest:  # only while its first registration is being rolled back
                continue
            mv, status, metrics = latest[m.id]
            names = {LATEST: mv.version, **aliases[m.id]}
            out.append({"name": m.name, "created_at": iso(m.created_at),
                        "latest_version": version_json(m.name, mv, status, metrics, names),
                        "aliases": names, "links": model_links(m.name)})
        return {"models": out, "next": page[-1].name if len(found) > q.limit else None}


@bp.get("/<name>")
@doc("A model: its versions with their jobs, registration times and final metrics, and its aliases",
     response=ModelOut, errors=(404,), tag=TAG)
def get_model(name: str):
    with ext()["sessions"]() as session:
        model = load_model(session, name)
        aliases = alias_map(session, model.id)
        versions = [version_json(name, mv, status, metrics, aliases) for mv, status, metrics
                    in _versions_with_jobs(session, ModelVersion.model_id == model.id)]
        return {"name": model.name, "created_at": iso(model.created_at), "latest_version": aliases.get(LATEST),
                "aliases": aliases, "versions": versions, "links": model_links(name)}


@bp.delete("/<name>")
@doc("Delete a model with its versions and aliases; the jobs stay", status=204, errors=(404,), tag=TAG,
     description="Afterwards its jobs can be deleted, and the name registered afresh from version 1.")
def delete_model(name: str):
    with ext()["sessions"].begin() as session:
        model = lock_model(session, name)
        if model is None:
            raise model_not_found(name)
        session.execute(delete(ModelAlias).where(ModelAlias.model_id == model.id))
        session.execute(delete(ModelVersion).where(ModelVersion.model_id == model.id))
        session.execute(delete(RegisteredModel).where(RegisteredModel.id == model.id))
    log.info("model %r deleted", name)
    return Response(status=204)


@bp.get("/<name>/versions/<version>")
@doc("One version of a model", response=ModelVersionOut, errors=(404,), tag=TAG)
def get_version(name: str, version: str):
    with ext()["sessions"]() as session:
        model = load_model(session, name)
        return one_version_json(session, model, load_version(session, model, version))


@bp.get("/<name>/aliases/<alias>")
@doc("The version an alias points at", response=ModelVersionOut, errors=(404,), tag=TAG,
     description="`latest` is always defined: the newest version.")
def get_alias(name: str, alias: str):
    with ext()["sessions"]() as session:
        model = load_model(session, name)
        return one_version_json(session, model, resolve_alias(session, model, alias))


def alias_json(name: str, alias: str, version: int) -> dict[str, Any]:
    return {"model": name, "alias": alias, "version": version, "links": {
        "self": url_for("models.get_alias", name=name, alias=alias),
        "version": url_for("models.get_version", name=name, version=version),
        "predict": url_for("models.predict_alias", name=name, alias=alias)}}


@bp.put("/<name>/aliases/<alias>")
@doc("Point an alias at a version, creating or moving it", body=AliasSet, response=AliasOut,
     errors=(404,), tag=TAG,
     description="E.g. PUT /v1/models/iris/aliases/production {\"version\": 2}. `latest` is reserved (422): it "
                 "always points at the newest version. 404 `version_not_found` for a version the model does "
                 "not have.")
def set_alias(name: str, alias: str):
    body = parse(AliasSet, read_json_body())
    check_alias(alias)
    with ext()["sessions"].begin() as session:
        model = lock_model(session, name)
        if model is None:
            raise model_not_found(name)
        load_version(session, model, body.version)
        session.merge(ModelAlias(model_id=model.id, alias=alias, version=body.version))
    log.info("model %r alias %r -> version %d", name, alias, body.version)
    return alias_json(name, alias, body.version)


@bp.delete("/<name>/aliases/<alias>")
@doc("Remove an alias (the version stays)", status=204, errors=(404, 422), tag=TAG,
     description="`latest` is reserved and cannot be removed (422).")
def delete_alias(name: str, alias: str):
    check_alias(alias)
    with ext()["sessions"].begin() as session:
        model = lock_model(session, name)
        if model is None:
            raise model_not_found(name)
        gone = session.execute(delete(ModelAlias).where(ModelAlias.model_id == model.id,
                                                        ModelAlias.alias == alias)).rowcount
        if not gone:
            raise ApiError(404, "alias_not_found", f"model {name!r} has no alias {alias!r}")
    return Response(status=204)


# --- predictions ---

def _predict(name: str, pick) -> dict[str, Any]:
    body = parse(PredictRequest, read_json_body())
    with ext()["sessions"]() as session:
        model = load_model(session, name)
        mv = pick(session, model)
        job = session.get(Job, mv.job_id)
        if job.status != JobStatus.SUCCEEDED:  # cannot happen: only succeeded jobs are registered
            raise ApiError(409, "job_not_finished", f"job {job.id} is {job.status}", job_status=job.status)
        model = ext()["models"].get(session, job)  # rebuilt once per job, then served from memory
    return {**answer(model, body), "model": name, "version": mv.version, "job_id": job.id}


PREDICT_NOTE = (" Send `{\"instances\": rows}` or `{\"inputs\": rows}`; the answer has `predictions` (classes in "
                "the training data's own labels) and, for classifiers, `probabilities` and the `classes` they are "
                "of. Rows of the wrong shape "
                "or with non-finite numbers are a 422 saying what was expected and what came.")


@bp.post("/<name>/predict")
@doc("Predict with a model's latest version", body=PredictRequest, response=PredictOut, errors=(404,), tag=TAG,
     description="Serves the `latest` alias - the newest registered version - not `production`: a new "
                 "version is served here as soon as it is registered. To serve a promoted version, call "
                 "/v1/models/{name}/aliases/production/predict, or pin one with /versions/{version}/predict."
                 + PREDICT_NOTE)
def predict_model(name: str):
    return _predict(name, lambda session, model: resolve_alias(session, model, LATEST))


@bp.post("/<name>/versions/<version>/predict")
@doc("Predict with one version of a model", body=PredictRequest, response=PredictOut, errors=(404,), tag=TAG,
     description=PREDICT_NOTE.strip())
def predict_version(name: str, version: str):
    return _predict(name, lambda session, model: load_version(session, model, version))


@bp.post("/<name>/aliases/<alias>/predict")
@doc("Predict with the version an alias points at", body=PredictRequest, response=PredictOut, errors=(404,),
     tag=TAG, description="E.g. /v1/models/iris/aliases/production/predict." + PREDICT_NOTE)
def predict_alias(name: str, alias: str):
    return _predict(name, lambda session, model: resolve_alias(session, model, alias))
