"""Schemathesis against the app's own /openapi.json, in process (WSGI): every documented
operation is called with generated requests, valid and invalid. No response may be a server
error, and every response must match the document: a documented status code, the documented
media type and a body that validates against the documented schema.

Without a worker, created jobs just stay queued. app/limits.py bounds what a generated spec can
ask for, so no generated request can allocate a large network or dataset."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from core.config import Settings
from tests.conftest import migrate

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


def _settings(data_dir: Path) -> Settings:
    # auth off (the embedded default); a rate limit no generated run reaches
    return Settings(data_dir=data_dir, rate_limit="1000000 per minute")


def _document() -> dict:
    """The document as the app serves it. Built once at collection time, because schemathesis
    makes one test per operation from it (its fixture-based loader does not run on pytest 9)."""
    from app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(_settings(Path(tmp)))
        try:
            return app.test_client().get("/openapi.json").get_json()
        finally:
            app.extensions["backprop"]["engine"].dispose()


schema = schemathesis.openapi.from_dict(_document())


@pytest.fixture
def api(tmp_path):
    from app import create_app

    s = _settings(tmp_path / "data")
    migrate(s.database_url)
    application = create_app(s)
    yield application
    application.extensions["backprop"]["engine"].dispose()


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_matches_its_document(case, api):
    case.call_and_validate(app=api, checks=CHECKS)


@pytest.fixture
def seeded(api):
    """Real resources to aim the generated requests at: jobs in every state (a succeeded one with
    epochs and weights), datasets, and a registered model with an alias."""
    from datetime import timedelta

    from core.db import Job, JobStatus
    from core.db.models import utcnow
    from tests.data import iris_job
    from worker.training import run_job

    client, sessions = api.test_client(), api.extensions["backprop"]["sessions"]
    ids: dict[str, list[str]] = {}

    def submit() -> str:
        resp = client.post("/v1/jobs", json=iris_job(epochs=3))
        assert resp.status_code == 202, resp.get_json()
        return resp.get_json()["id"]

    done = submit()
    run_job(sessions, done)
    queued, running, failed = submit(), submit(), submit()
    with sessions.begin() as s:
        job = s.get(Job, running)
        job.status, job.started_at, job.epochs_done, job.attempts = JobStatus.RUNNING, utcnow() - timedelta(
            seconds=2), 1, 1
        job = s.get(Job, failed)
        job.status, job.finished_at, job.stop_reason, job.error = JobStatus.FAILED, utcnow(), "error", "boom"
    ids["job_id"] = [done, queued, running, failed]
    ids["finished_job_id"] = [done, failed]  # an event stream of an active job only ends with the job
    ds = client.post("/v1/datasets", json={"features": [[0, 1], [1, 0], [1, 1], [0, 0]], "targets": [1, 1, 0, 0],
                                           "name": "xor"})
    assert ds.status_code == 201, ds.get_json()
    ids["dataset_id"] = [ds.get_json()["id"], client.get(f"/v1/jobs/{done}").get_json()["dataset_id"]]
    reg = client.post("/v1/models", json={"name": "iris", "job_id": done, "aliases": ["prod"]})
    assert reg.status_code == 201, reg.get_json()
    ids["name"], ids["version"], ids["alias"] = ["iris"], ["1"], ["prod", "latest"]
    return ids


real_ids = schema.include(path_regex=r"\{")


@real_ids.parametrize()
@real_ids.given(data=st.data())
@settings(max_examples=15, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_on_real_resources_matches_its_document(case, data, api, seeded):
    """The same checks with the path parameters pointing at resources that exist."""
    for name in case.path_parameters or {}:
        if name in seeded:
            pool = seeded["finished_job_id" if case.path.endswith("/events") else name]
            case.path_parameters[name] = data.draw(st.sampled_from(pool), label=name)
    case.call_and_validate(app=api, checks=CHECKS)
