"""The model registry against a real SQLite database and the real filesystem broker: jobs are
trained with the worker's own run_job, registered as versions of named models, aliased, and
served by name, version and alias."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from sqlalchemy import func, select

from core.config import Settings
from core.db import ModelVersion, RegisteredModel
from core.keys import create_key
from tests.conftest import migrate
from tests.data import iris, iris_job
from worker.training import run_job

PROBLEM = "application/problem+json"


def trained(client, sessions, body=None, headers=None) -> str:
    resp = client.post("/v1/jobs", json=body or iris_job(epochs=5), headers=headers)
    assert resp.status_code == 202, resp.get_json()
    job_id = resp.get_json()["id"]
    run_job(sessions, job_id)
    return job_id


def register(client, name, job_id, headers=None, **extra):
    return client.post("/v1/models", json={"name": name, "job_id": job_id, **extra}, headers=headers)


def problem(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.get_json()
    assert resp.mimetype == PROBLEM
    body = resp.get_json()
    assert body["code"] == code, body
    return body


@pytest.fixture
def two_jobs(client, sessions):
    """Two differently trained iris classifiers, registered as versions 1 and 2 of `iris`."""
    first = trained(client, sessions, iris_job(epochs=40))
    second = trained(client, sessions, iris_job(epochs=8, seed=1))
    assert register(client, "iris", first).status_code == 201
    assert register(client, "iris", second).status_code == 201
    return first, second


def test_register_versions_latest_and_aliases(client, sessions):
    first = trained(client, sessions, iris_job(epochs=40))
    second = trained(client, sessions, iris_job(epochs=8, seed=1))

    resp = register(client, "iris", first)
    assert resp.status_code == 201
    v1 = resp.get_json()
    assert resp.headers["Location"] == "/v1/models/iris/versions/1" == v1["links"]["self"]
    assert v1["model"] == "iris" and v1["version"] == 1 and v1["job_id"] == first
    assert v1["aliases"] == ["latest"] and v1["job_status"] == "succeeded"
    assert v1["metrics"]["accuracy"] > 0.9 and v1["created_at"].endswith("+00:00")
    assert v1["links"] == {"self": "/v1/models/iris/versions/1", "job": f"/v1/jobs/{first}",
                           "predict": "/v1/models/iris/versions/1/predict"}

    v2 = register(client, "iris", second).get_json()
    assert v2["version"] == 2 and v2["aliases"] == ["latest"]
    assert client.get("/v1/models/iris/versions/1").get_json()["aliases"] == []  # latest moved on by itself

    model = client.get("/v1/models/iris").get_json()
    assert model["name"] == "iris" and model["latest_version"] == 2 and model["aliases"] == {"latest": 2}
    assert [(v["version"], v["job_id"]) for v in model["versions"]] == [(1, first), (2, second)]
    assert all(v["created_at"] and v["metrics"]["loss"] > 0 for v in model["versions"])
    assert model["links"] == {"self": "/v1/models/iris", "predict": "/v1/models/iris/predict"}

    # production: set on v1, then moved to v2
    resp = client.put("/v1/models/iris/aliases/production", json={"version": 1})
    assert resp.status_code == 200
    assert resp.get_json()["version"] == 1 and resp.get_json()["links"]["predict"] == \
        "/v1/models/iris/aliases/production/predict"
    assert client.get("/v1/models/iris").get_json()["aliases"] == {"latest": 2, "production": 1}
    assert client.get("/v1/models/iris/versions/1").get_json()["aliases"] == ["production"]
    assert client.get("/v1/models/iris/aliases/production").get_json()["job_id"] == first
    client.put("/v1/models/iris/aliases/production", json={"version": 2})
    assert client.get("/v1/models/iris/aliases/production").get_json()["version"] == 2
    assert client.get("/v1/models/iris/versions/2").get_json()["aliases"] == ["latest", "production"]
    assert client.get("/v1/models/iris/aliases/latest").get_json()["job_id"] == second

    assert client.delete("/v1/models/iris/aliases/production").status_code == 204
    problem(client.get("/v1/models/iris/aliases/production"), 404, "alias_not_found")
    problem(client.delete("/v1/models/iris/aliases/production"), 404, "alias_not_found")
    assert client.get("/v1/models/iris").get_json()["aliases"] == {"latest": 2}


def test_register_can_set_aliases_at_once(client, sessions):
    job = trained(client, sessions)
    v1 = register(client, "m", job, aliases=["production", "staging", "production"]).get_json()
    assert v1["aliases"] == ["latest", "production", "staging"]
    problem(register(client, "m", job, aliases=["latest"]), 422, "validation_error")
    body = problem(register(client, "m", job, aliases=["ok", "not ok"]), 422, "validation_error")
    assert body["errors"][0]["path"] == "aliases[1]"
    assert client.get("/v1/models/m").get_json()["latest_version"] == 1  # nothing half-registered


def test_list_models_with_latest_version_and_aliases(client, sessions):
    job = trained(client, sessions)
    for name in ("beta", "alpha", "gamma"):
        register(client, name, job)
    register(client, "alpha", job)
    client.put("/v1/models/alpha/aliases/production", json={"version": 1})

    page = client.get("/v1/models?limit=2").get_json()
    assert [m["name"] for m in page["models"]] == ["alpha", "beta"] and page["next"] == "beta"
    alpha = page["models"][0]
    assert alpha["latest_version"]["version"] == 2 and alpha["latest_version"]["job_id"] == job
    assert alpha["aliases"] == {"latest": 2, "production": 1}
    assert alpha["links"]["self"] == "/v1/models/alpha"
    rest = client.get(f"/v1/models?limit=2&next={page['next']}").get_json()
    assert [m["name"] for m in rest["models"]] == ["gamma"] and rest["next"] is None
    problem(client.get("/v1/models?limit=0"), 422, "validation_error")


def test_predict_by_name_version_and_alias_equals_job_predict(client, two_jobs):
    first, second = two_jobs
    client.put("/v1/models/iris/aliases/production", json={"version": 1})
    x, y = iris()
    rows = {"instances": x.tolist()}
    by_job = {job: client.post(f"/v1/jobs/{job}/predict", json=rows).get_json() for job in two_jobs}
    assert by_job[first]["probabilities"] != by_job[second]["probabilities"]  # the versions can be told apart

    for url, job, version in (("/v1/models/iris/predict", second, 2),
                              ("/v1/models/iris/versions/1/predict", first, 1),
                              ("/v1/models/iris/versions/2/predict", second, 2),
                              ("/v1/models/iris/aliases/production/predict", first, 1),
                              ("/v1/models/iris/aliases/latest/predict", second, 2)):
        resp = client.post(url, json=rows)
        assert resp.status_code == 200, (url, resp.get_json())
        out = resp.get_json()
        assert out["model"] == "iris" and out["version"] == version and out["job_id"] == job, url
        assert out["predictions"] == by_job[job]["predictions"], url
        assert out["probabilities"] == by_job[job]["probabilities"], url
    out = client.post("/v1/models/iris/versions/1/predict", json={"inputs": x.tolist()}).get_json()
    assert np.mean(np.array(out["predictions"]) == y) > 0.9
    assert np.allclose(np.sum(out["probabilities"], axis=1), 1, atol=1e-5)


def test_string_labelled_model_predicts_original_labels(client, sessions):
    body = iris_job(epochs=40)
    names = np.array(["setosa", "versicolor", "virginica"])
    body["dataset"]["targets"] = names[np.array(body["dataset"]["targets"])].tolist()
    register(client, "flowers", trained(client, sessions, body))
    x, y = iris()
    out = client.post("/v1/models/flowers/predict", json={"instances": x.tolist()}).get_json()
    assert set(out["predictions"]) <= set(names)
    assert np.mean(np.array(out["predictions"]) == names[y]) > 0.9
    assert np.array(out["probabilities"]).shape == (150, 3)


def test_predict_rejects_wrong_shapes_and_non_finite_numbers(client, sessions):
    register(client, "iris", trained(client, sessions, iris_job(epochs=2)))
    body = problem(client.post("/v1/models/iris/predict", json={"instances": [[1, 2, 3]]}), 422, "validation_error")
    assert "expected rows of shape [4], got [3]" in body["detail"]
    assert body["errors"][0]["path"] == "instances" and "expected" in body["errors"][0]["message"]
    assert body["detail"] == f"instances: {body['errors'][0]['message']}"  # as every 422: path: message
    body = problem(client.post("/v1/models/iris/versions/1/predict", json={"inputs": [1, 2, 3, 4]}),
                   422, "validation_error")
    assert body["errors"][0]["path"] == "inputs"
    raw = json.dumps({"inputs": [[0, 0, 123.5, 0]]}).replace("123.5", "1e400")
    body = problem(client.post("/v1/models/iris/predict", data=raw, content_type="application/json"),
                   422, "validation_error")
    assert body["errors"][0] == {"path": "inputs[0][2]", "message": "must be a finite number"}
    problem(client.post("/v1/models/iris/predict", json={"inputs": [[0] * 4], "instances": [[0] * 4]}),
            422, "validation_error")
    problem(client.post("/v1/models/iris/predict", json={}), 422, "validation_error")


def test_second_predict_is_served_from_the_cache(client, sessions, monkeypatch):
    import app.predict

    job = trained(client, sessions)
    register(client, "iris", job)
    client.put("/v1/models/iris/aliases/production", json={"version": 1})
    loads = []
    real = app.predict.load_weights
    monkeypatch.setattr(app.predict, "load_weights", lambda session, job_id: loads.append(job_id) or
                        real(session, job_id))
    rows = {"instances": [[0.1, 0.2, 0.3, 0.4]]}
    answers = [client.post(url, json=rows).get_json() for url in (
        "/v1/models/iris/predict", "/v1/models/iris/predict", "/v1/models/iris/versions/1/predict",
        "/v1/models/iris/aliases/production/predict", f"/v1/jobs/{job}/predict")]
    assert loads == [job]  # weights read once; every later call, by any route, reuses the network
    assert job in client.application.extensions["backprop"]["models"]
    assert all(a["predictions"] == answers[0]["predictions"] for a in answers)


def test_register_refuses_unfinished_and_unknown_jobs(client, sessions):
    queued = client.post("/v1/jobs", json=iris_job(epochs=2)).get_json()["id"]
    body = problem(register(client, "iris", queued), 409, "job_not_finished")
    assert body["job_status"] == "queued"
    problem(register(client, "iris", "doesnotexist"), 404, "job_not_found")
    problem(register(client, "iris", "doesnotexist", extra=1), 422, "validation_error")
    problem(client.get("/v1/models/iris"), 404, "model_not_found")  # nothing was created on the way
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(RegisteredModel)) == 0


@pytest.mark.parametrize("name", ["", "a" * 129, "has space", "slash/name", "..", ".", "ümlaut", "semi;colon"])
def test_bad_model_names_are_422(client, sessions, name):
    body = problem(register(client, name, "any"), 422, "validation_error")
    assert body["errors"][0]["path"] == "name"


def test_names_at_the_limits_are_accepted(client, sessions):
    job = trained(client, sessions, iris_job(epochs=1))
    for name in ("a" * 128, "v1.0-rc_2", "X"):
        resp = register(client, name, job)
        assert resp.status_code == 201, resp.get_json()
        assert client.get(resp.headers["Location"]).status_code == 200


def test_unknown_model_version_and_alias_are_404(client, sessions):
    register(client, "iris", trained(client, sessions, iris_job(epochs=1)))
    rows = {"instances": [[0, 0, 0, 0]]}
    for resp in (client.get("/v1/models/nope"), client.post("/v1/models/nope/predict", json=rows),
                 client.get("/v1/models/nope/versions/1"), client.delete("/v1/models/nope"),
                 client.put("/v1/models/nope/aliases/production", json={"version": 1}),
                 client.delete("/v1/models/nope/aliases/production")):
        problem(resp, 404, "model_not_found")
    for resp in (client.get("/v1/models/iris/versions/2"), client.get("/v1/models/iris/versions/abc"),
                 client.get("/v1/models/iris/versions/0"), client.get("/v1/models/iris/versions/%C2%B2"),
                 client.get("/v1/models/iris/versions/99999999999999999999"),
                 client.post("/v1/models/iris/versions/7/predict", json=rows),
                 client.put("/v1/models/iris/aliases/production", json={"version": 9})):
        body = problem(resp, 404, "version_not_found")
        assert body["latest_version"] == 1
    for resp in (client.get("/v1/models/iris/aliases/production"),
                 client.post("/v1/models/iris/aliases/production/predict", json=rows)):
        problem(resp, 404, "alias_not_found")


def test_latest_is_reserved(client, sessions):
    register(client, "iris", trained(client, sessions, iris_job(epochs=1)))
    for alias in ("latest", "LATEST"):
        body = problem(client.put(f"/v1/models/iris/aliases/{alias}", json={"version": 1}), 422, "validation_error")
        assert "reserved" in body["detail"] and body["errors"][0]["path"] == "alias"
        problem(client.delete(f"/v1/models/iris/aliases/{alias}"), 422, "validation_error")
    problem(client.put("/v1/models/iris/aliases/not.ok", json={"version": 1}), 422, "validation_error")
    for version in (0, 2**63, "one"):
        problem(client.put("/v1/models/iris/aliases/prod", json={"version": version}), 422, "validation_error")
    problem(client.put("/v1/models/iris/aliases/prod", json={}), 422, "validation_error")
    assert client.get("/v1/models/iris").get_json()["aliases"] == {"latest": 1}


def test_registered_job_cannot_be_deleted_until_its_model_is(client, sessions):
    job = trained(client, sessions, iris_job(epochs=1))
    register(client, "iris", job)
    register(client, "iris", job)  # the same job twice is two versions
    body = problem(client.delete(f"/v1/jobs/{job}"), 409, "job_registered")
    assert "'iris'" in body["detail"]
    assert client.delete("/v1/models/iris").status_code == 204
    problem(client.get("/v1/models/iris"), 404, "model_not_found")
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(ModelVersion)) == 0
    assert register(client, "iris", job).get_json()["version"] == 1  # a fresh name starts again at 1
    client.delete("/v1/models/iris")
    assert client.delete(f"/v1/jobs/{job}").status_code == 204


def test_idempotent_registration(client, sessions):
    job = trained(client, sessions, iris_job(epochs=1))
    headers = {"Idempotency-Key": "register-iris-1"}
    first = client.post("/v1/models", json={"name": "iris", "job_id": job}, headers=headers)
    again = client.post("/v1/models", json={"name": "iris", "job_id": job}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"] == "/v1/models/iris/versions/1"
    assert [v["version"] for v in client.get("/v1/models/iris").get_json()["versions"]] == [1]


def test_concurrent_registrations_get_distinct_versions(app, client, sessions):
    job = trained(client, sessions, iris_job(epochs=1))
    n = 8
    start = threading.Barrier(n)

    def one(_):
        c = app.test_client()
        start.wait()
        resp = c.post("/v1/models", json={"name": "race", "job_id": job})
        return resp.status_code, resp.get_json().get("version")

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    assert [status for status, _ in results] == [201] * n, results
    assert sorted(v for _, v in results) == list(range(1, n + 1))
    assert client.get("/v1/models/race").get_json()["latest_version"] == n


def test_a_lost_version_race_is_retried_once(client, sessions, monkeypatch):
    import app.models_api as models_api

    job = trained(client, sessions, iris_job(epochs=1))
    register(client, "iris", job)
    stale = iter([1])  # as if another writer took version 2's predecessor number meanwhile
    real = models_api.next_version
    monkeypatch.setattr(models_api, "next_version", lambda s, model_id: next(stale, None) or real(s, model_id))
    resp = register(client, "iris", job)
    assert resp.status_code == 201 and resp.get_json()["version"] == 2

    monkeypatch.setattr(models_api, "next_version", lambda s, model_id: 1)  # loses every time
    body = problem(register(client, "iris", job), 409, "registration_conflict")
    assert "try again" in body["detail"]


@pytest.fixture
def tenants(tmp_path):
    from app import create_app

    settings = Settings(data_dir=tmp_path / "authdata", auth="on")
    migrate(settings.database_url)
    application = create_app(settings)
    sessions = application.extensions["backprop"]["sessions"]
    with sessions.begin() as s:
        keys = {t: {"Authorization": f"Bearer {create_key(s, t)}"} for t in ("acme", "globex")}
    yield application.test_client(), sessions, keys
    application.extensions["backprop"]["engine"].dispose()


def test_another_tenants_models_and_jobs_are_404(tenants):
    client, sessions, keys = tenants
    acme, globex = keys["acme"], keys["globex"]
    job = trained(client, sessions, iris_job(epochs=1), headers=acme)
    assert client.post("/v1/models", json={"name": "iris", "job_id": job}, headers=acme).status_code == 201
    assert client.put("/v1/models/iris/aliases/production", json={"version": 1}, headers=acme).status_code == 200

    problem(client.post("/v1/models", json={"name": "iris", "job_id": job}, headers=globex), 404, "job_not_found")
    rows = {"instances": [[0, 0, 0, 0]]}
    for resp in (client.get("/v1/models/iris", headers=globex),
                 client.get("/v1/models/iris/versions/1", headers=globex),
                 client.post("/v1/models/iris/predict", json=rows, headers=globex),
                 client.post("/v1/models/iris/aliases/production/predict", json=rows, headers=globex),
                 client.put("/v1/models/iris/aliases/production", json={"version": 1}, headers=globex),
                 client.delete("/v1/models/iris", headers=globex)):
        problem(resp, 404, "model_not_found")
    assert client.get("/v1/models", headers=globex).get_json()["models"] == []
    problem(client.get("/v1/models"), 401, "unauthorized")

    # the same name in another tenant is another model
    own = trained(client, sessions, iris_job(epochs=1), headers=globex)
    resp = client.post("/v1/models", json={"name": "iris", "job_id": own}, headers=globex)
    assert resp.status_code == 201 and resp.get_json()["version"] == 1
    assert client.get("/v1/models/iris", headers=acme).get_json()["versions"][0]["job_id"] == job


def test_openapi_documents_the_registry(app):
    from flask import Flask

    from app.models_api import bp
    from app.openapi import build_document

    # the registry's operations on their own: the whole /openapi.json also carries the jobs API,
    # whose engine spec schema is not this test's subject
    only_models = Flask("only_models")
    only_models.extensions["backprop"] = app.extensions["backprop"]
    only_models.register_blueprint(bp)
    paths = build_document(only_models)["paths"]
    expected = {
        ("/v1/models", "post"): {"201", "404", "409", "422"},
        ("/v1/models", "get"): {"200", "422"},
        ("/v1/models/{name}", "get"): {"200", "404"},
        ("/v1/models/{name}", "delete"): {"204", "404"},
        ("/v1/models/{name}/versions/{version}", "get"): {"200", "404"},
        ("/v1/models/{name}/aliases/{alias}", "get"): {"200", "404"},
        ("/v1/models/{name}/aliases/{alias}", "put"): {"200", "404", "422"},
        ("/v1/models/{name}/aliases/{alias}", "delete"): {"204", "404", "422"},
        ("/v1/models/{name}/predict", "post"): {"200", "404", "422"},
        ("/v1/models/{name}/versions/{version}/predict", "post"): {"200", "404", "422"},
        ("/v1/models/{name}/aliases/{alias}/predict", "post"): {"200", "404", "422"},
    }
    for (path, method), statuses in expected.items():
        op = paths[path][method]
        assert statuses <= set(op["responses"]), (path, method, sorted(op["responses"]))
        assert op["tags"] == ["models"]
    assert "`latest`" in paths["/v1/models/{name}/predict"]["post"]["description"]
    assert "production" in paths["/v1/models/{name}/predict"]["post"]["description"]


def test_a_query_the_route_does_not_take_or_a_version_that_is_not_an_integer_is_refused(client, two_jobs):
    """`predict?version=1` answered with the latest version; `{"version": true}` set an alias to 1."""
    rows = {"inputs": [[0.1, 0.2, 0.3, 0.4]]}
    body = problem(client.post("/v1/models/iris/predict?version=1", json=rows), 422, "validation_error")
    assert body["errors"][0]["path"] == "version" and "unknown parameter" in body["errors"][0]["message"]
    for version in (True, "2", 1.0):
        body = problem(client.put("/v1/models/iris/aliases/staging", json={"version": version}), 422,
                       "validation_error")
        assert body["errors"][0]["path"] == "version", version
    assert client.put("/v1/models/iris/aliases/staging", json={"version": 2}).status_code == 200
    body = problem(client.get("/v1/models?limit=1&limit=2"), 422, "validation_error")
    assert body["errors"][0] == {"path": "limit", "message": "given more than once"}
