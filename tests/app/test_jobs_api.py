"""The jobs API against a real SQLite database and the real filesystem broker; a job is
trained by calling the worker's own run_job, as the Celery task does."""

from __future__ import annotations

import copy
import io
import json

import numpy as np
import pytest
from sqlalchemy import func, select

from core.db import Dataset, Job
from tests.data import iris, iris_job
from worker.training import run_job

PROBLEM = "application/problem+json"


def queued_messages(settings) -> int:
    return sum(1 for p in settings.broker_dir.iterdir() if p.suffix == ".msg") if settings.broker_dir.exists() else 0


HUGE = 123456.789  # written into the raw body as 1e400, which JSON parsers read as infinity


def submit(client, body):
    raw = json.dumps(body).replace(str(HUGE), "1e400")
    return client.post("/v1/jobs", data=raw, content_type="application/json")


def trained_job(client, sessions, body=None) -> str:
    resp = submit(client, body or iris_job())
    assert resp.status_code == 202, resp.get_json()
    job_id = resp.get_json()["id"]
    run_job(sessions, job_id)
    return job_id


def test_submit_commits_the_job_then_enqueues_its_id(client, migrated, sessions):
    resp = submit(client, iris_job())
    assert resp.status_code == 202
    body = resp.get_json()
    assert body["status"] == "queued"
    assert resp.headers["Location"] == f"/v1/jobs/{body['id']}"
    assert body["progress"] == {"epoch": 0, "total_epochs": 60}
    assert body["links"]["predict"] == f"/v1/jobs/{body['id']}/predict"
    assert queued_messages(migrated) == 1
    message = next(migrated.broker_dir.glob("*.msg")).read_text()
    assert body["id"] in message and "features" not in message  # the broker carries only the id
    with sessions() as s:
        assert s.get(Job, body["id"]).status == "queued"


def test_job_lifecycle_epochs_weights_predict(client, sessions):
    job_id = trained_job(client, sessions)
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "succeeded"
    assert job["progress"] == {"epoch": 60, "total_epochs": 60}
    assert job["started_at"] and job["finished_at"] and job["created_at"].endswith("+00:00")
    assert job["metrics"]["accuracy"] > 0.9 and job["error"] is None

    epochs = client.get(f"/v1/jobs/{job_id}/epochs").get_json()["epochs"]
    assert [e["epoch"] for e in epochs] == list(range(1, 61))
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    assert set(epochs[0]) >= {"loss", "accuracy", "duration", "grad_norms", "weight_norms"}
    assert set(epochs[0]["grad_norms"]) == {"dense_0", "dense_1"}

    weights = client.get(f"/v1/jobs/{job_id}/weights").get_json()["weights"]
    by_name = {w["name"]: w for w in weights}
    assert by_name["dense_0/kernel"]["shape"] == [4, 16]
    assert by_name["dense_1/bias"]["dtype"] == "float32"
    npz = client.get(f"/v1/jobs/{job_id}/weights?format=npz")
    assert npz.status_code == 200
    with np.load(io.BytesIO(npz.data), allow_pickle=False) as arrays:
        np.testing.assert_allclose(arrays["dense_0/kernel"], np.array(by_name["dense_0/kernel"]["values"]))

    x, y = iris()
    pred = client.post(f"/v1/jobs/{job_id}/predict", json={"inputs": x.tolist()}).get_json()
    assert np.mean(np.array(pred["predictions"]) == y) > 0.9
    assert np.allclose(np.sum(pred["probabilities"], axis=1), 1, atol=1e-5)
    same = client.post(f"/v1/jobs/{job_id}/predict", json={"instances": x[:5].tolist()}).get_json()
    assert same["predictions"] == pred["predictions"][:5]


def test_string_labels_come_back_as_labels(client, sessions):
    body = iris_job(epochs=40)
    names = np.array(["setosa", "versicolor", "virginica"])
    body["dataset"]["targets"] = names[np.array(body["dataset"]["targets"])].tolist()
    job_id = trained_job(client, sessions, body)
    x, y = iris()
    pred = client.post(f"/v1/jobs/{job_id}/predict", json={"inputs": x.tolist()}).get_json()
    assert set(pred["predictions"]) <= set(names)
    assert np.mean(np.array(pred["predictions"]) == names[y]) > 0.9


def test_regression_job_predicts_values(client, sessions):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(200, 2))
    y = (x[:, 0] * 2 - x[:, 1]).round(4)
    body = {"model": {"input_shape": [2], "layers": [{"type": "dense", "units": 1}], "loss": "mse"},
            "training": {"optimizer": {"type": "sgd", "learning_rate": 0.1}, "epochs": 50},
            "dataset": {"features": x.round(4).tolist(), "targets": y.tolist()}}
    job_id = trained_job(client, sessions, body)
    out = client.post(f"/v1/jobs/{job_id}/predict", json={"inputs": [[0.5, 0.5], [1.0, -1.0]]}).get_json()
    np.testing.assert_allclose(out["predictions"], [0.5, 3.0], atol=0.05)
    assert "probabilities" not in out


def test_predict_and_weights_wait_for_success(client):
    job_id = submit(client, iris_job()).get_json()["id"]
    for resp in (client.post(f"/v1/jobs/{job_id}/predict", json={"inputs": [[0, 0, 0, 0]]}),
                 client.get(f"/v1/jobs/{job_id}/weights")):
        assert resp.status_code == 409
        assert resp.mimetype == PROBLEM
        assert resp.get_json()["code"] == "job_not_finished"
    # cancelled before an epoch ended: finished, with nothing stored ("not finished" was false)
    assert client.post(f"/v1/jobs/{job_id}/cancel").get_json()["status"] == "cancelled"
    for resp in (client.get(f"/v1/jobs/{job_id}/weights"),
                 client.post(f"/v1/jobs/{job_id}/predict", json={"inputs": [[0, 0, 0, 0]]})):
        assert resp.status_code == 409 and resp.get_json()["code"] == "no_weights", resp.get_json()
    resp = client.post("/v1/jobs", json={**iris_job(epochs=1), "init_from": job_id})
    assert resp.status_code == 409 and resp.get_json()["code"] == "no_weights", resp.get_json()
    assert resp.get_json()["errors"][0]["path"] == "init_from"


def test_the_job_is_committed_before_its_id_reaches_the_broker(client, sessions, monkeypatch):
    """A worker polls the broker fast: an id sent before the commit could be claimed, found
    missing and dropped ("does not exist"), and would wait a minute for the reconciler."""
    import app.jobs as jobs

    sent, real = [], jobs.enqueue_training

    def spy(celery, job_id):
        with sessions() as s:  # another connection, as a worker's
            sent.append(s.get(Job, job_id) is not None)
        return real(celery, job_id)

    monkeypatch.setattr(jobs, "enqueue_training", spy)
    assert submit(client, iris_job(epochs=1)).status_code == 202
    assert sent == [True]


def test_predict_rejects_wrong_shapes(client, sessions):
    job_id = trained_job(client, sessions, iris_job(epochs=2))
    resp = client.post(f"/v1/jobs/{job_id}/predict", json={"inputs": [[1, 2, 3]]})
    assert resp.status_code == 422
    assert "expected" in resp.get_json()["detail"] and resp.get_json()["errors"][0]["path"] == "inputs"
    resp = client.post(f"/v1/jobs/{job_id}/predict", json={})
    assert resp.status_code == 422


def test_values_beyond_float32_are_refused_at_submission_and_at_predict(client, sessions):
    """float32 cannot hold 1e39: cast, it became infinite, and the job failed epochs later as
    "the weights became non-finite". Submission and predict name the value instead."""
    x, y = iris()
    x = x.copy()
    x[7, 2] = 1e300
    ds = client.post("/v1/datasets", json={"features": x.tolist(), "targets": y.tolist()}).get_json()["id"]
    resp = submit(client, {**iris_job(), "dataset": None, "dataset_id": ds})
    assert resp.status_code == 422, resp.get_json()
    error = resp.get_json()["errors"][0]
    assert error["path"] == "dataset_id" and error["message"].startswith("features[7][2]: 1e+300 is beyond"), error
    as_float64 = iris_job(epochs=2)
    as_float64["model"]["dtype"] = "float64"
    assert submit(client, {**as_float64, "dataset": None, "dataset_id": ds}).status_code == 202

    job_id = trained_job(client, sessions, iris_job(epochs=2))
    resp = client.post(f"/v1/jobs/{job_id}/predict", json={"instances": [[1, 1, 1, 1], [1, 1e39, 1, 1]]})
    assert resp.status_code == 422 and resp.get_json()["errors"][0]["path"] == "instances[1][1]", resp.get_json()


def test_predict_refuses_rows_whose_output_overflows(client, sessions):
    """Finite float32 inputs can still overflow inside the network: NaN is neither an answer nor
    JSON, so the row is named instead."""
    body = {"model": {"input_shape": [2], "layers": [{"type": "dense", "units": 1}], "loss": "mse"},
            "training": {"optimizer": {"type": "sgd", "learning_rate": 0.1}, "epochs": 200},
            "dataset": {"features": [[0, 1], [1, 0], [1, 1], [0, 0]] * 10, "targets": [3, 3, 6, 0] * 10}}
    job_id = trained_job(client, sessions, body)
    ok = client.post(f"/v1/jobs/{job_id}/predict", json={"inputs": [[1, 1]]})
    assert ok.status_code == 200 and abs(ok.get_json()["predictions"][0] - 6) < 0.5
    resp = client.post(f"/v1/jobs/{job_id}/predict", json={"inputs": [[1, 1], [3e38, 3e38]]})
    assert resp.status_code == 422, resp.get_json()
    assert resp.get_json()["errors"][0]["path"] == "inputs[1]" and "not finite" in resp.get_json()["detail"]


def _with(path: str, value):
    body = iris_job()
    target = body
    keys = path.split(".")
    for k in keys[:-1]:
        target = target[int(k)] if k.isdigit() else target[k]
    last = keys[-1]
    if value is _DELETE:
        del target[last]
    elif last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return body


_DELETE = object()

BAD_INPUTS = [
    ("missing layers", lambda: _with("model.layers", _DELETE), "model.layers", "required"),
    ("unknown layer type", lambda: _with("model.layers.0.type", "dense3d"), "model.layers[0].type",
     "unknown layer type"),
    ("unknown activation", lambda: _with("model.layers.0.activation", "swish2"), "model.layers[0].activation",
     "must be one of"),
    ("zero units", lambda: _with("model.layers.0.units", 0), "model.layers[0].units", ">= 1"),
    ("unknown loss", lambda: _with("model.loss", "hinge"), "model.loss", "must be one of"),
    ("softmax needed", lambda: _with("model.layers.1.activation", "relu"), "model.layers[1].activation",
     "softmax"),
    ("bad optimizer", lambda: _with("training.optimizer", {"type": "lbfgs"}), "training.optimizer.type",
     "must be one of"),
    ("negative epochs", lambda: _with("training.epochs", -1), "training.epochs", ">= 1"),
    ("typo in training", lambda: _with("training.epoch", 3), "training.epoch", "unknown field"),
    ("unknown top-level", lambda: _with("status", "succeeded"), "status", "unknown field"),
    ("lengths differ", lambda: _with("dataset.targets", [0, 1, 2]), "dataset.targets", "has 3 values"),
    ("ragged rows", lambda: _with("dataset.features.3", [1.0, 2.0]), "dataset.features[3]", "ragged"),
    ("non-numeric", lambda: _with("dataset.features.2", [1.0, "x", 2.0, 3.0]), "dataset.features[2][1]",
     "must be a number"),
    ("huge number", lambda: _with("dataset.features.1", [HUGE, 0, 0, 0]), "dataset.features[1][0]", "finite"),
    ("wrong width", lambda: _with("dataset.features", [[1, 2, 3]] * 150), "dataset.features", "shape [4]"),
    ("label out of range", lambda: _with("dataset.targets", [5] * 150), "dataset.targets", "0..2"),
    ("single class", lambda: _with("dataset.targets", [1] * 150), "dataset.targets", "only one class (1)"),
    ("empty features", lambda: _with("dataset.features", []), "dataset.features", "non-empty"),
    ("missing dataset", lambda: _with("dataset", _DELETE), "dataset", "exactly one of dataset"),
    ("monitor needs validation", lambda: _with("training.early_stopping", {"patience": 2}),
     "training.early_stopping.monitor", "val_loss is not recorded"),
    ("empty validation split", lambda: _with("training.validation_split", 0.001), "training.validation_split",
     "0 validation samples"),
    ("labels with a regression loss", lambda: _regression_with_labels(), "dataset.targets",
     "need a classification loss"),
    ("beyond float32", lambda: _with("dataset.features.1", [1e39, 0, 0, 0]), "dataset.features[1][0]",
     "beyond the range of the model's dtype float32"),
    ("regression target beyond float32", lambda: _regression_target(1e300), "dataset.targets",
     "beyond the range of float32"),
    ("not probability rows", lambda: _with("dataset.targets", [[-3, 4, 0]] * 150), "dataset.targets",
     "in [0, 1] that sum to 1"),
]


def _regression_target(value):
    body = _with("model.loss", "mse")
    body["model"]["layers"][1].update(activation="linear", units=1)
    body["dataset"]["targets"] = [0.5] * 149 + [value]
    return body


def _regression_with_labels():
    body = _with("model.loss", "mse")
    body["model"]["layers"][1]["activation"] = "linear"
    body["dataset"]["targets"] = ["a", "b", "c"] * 50
    return body


@pytest.mark.parametrize("case, make, path, message", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_a_422_naming_the_field(client, migrated, sessions, case, make, path, message):
    resp = submit(client, make())
    assert resp.status_code == 422, resp.get_json()
    assert resp.mimetype == PROBLEM
    body = resp.get_json()
    assert body["code"] == "validation_error" and body["status"] == 422
    assert any(e["path"] == path and message in e["message"] for e in body["errors"]), body["errors"]
    assert path in body["detail"]
    assert queued_messages(migrated) == 0  # nothing enqueued for a rejected job
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0
        assert s.scalar(select(func.count()).select_from(Dataset)) == 0


def test_malformed_json_and_wrong_media_type(client):
    resp = client.post("/v1/jobs", data="{not json", content_type="application/json")
    assert resp.status_code == 400 and resp.get_json()["code"] == "invalid_json"
    resp = client.post("/v1/jobs", data='{"a": NaN}', content_type="application/json")
    assert resp.status_code == 400
    resp = client.post("/v1/jobs", data="features=1", content_type="text/plain")
    assert resp.status_code == 415 and resp.mimetype == PROBLEM
    deep = "[" * 10000 + "]" * 10000
    resp = client.post("/v1/jobs", data=deep, content_type="application/json")
    assert resp.status_code in (400, 422) and resp.mimetype == PROBLEM


def test_unknown_routes_and_methods_speak_problem_json(client):
    resp = client.get("/v1/nothing")
    assert resp.status_code == 404 and resp.mimetype == PROBLEM and resp.get_json()["code"] == "not_found"
    resp = client.delete("/v1/jobs")
    assert resp.status_code == 405 and resp.mimetype == PROBLEM and "POST" in resp.headers["Allow"]
    resp = client.get("/v1/jobs/doesnotexist")
    assert resp.status_code == 404 and resp.get_json()["code"] == "job_not_found"
    for sub in ("epochs", "weights"):
        assert client.get(f"/v1/jobs/doesnotexist/{sub}").status_code == 404
    assert client.post("/v1/jobs/doesnotexist/predict", json={"inputs": [[1]]}).status_code == 404


def test_weights_format_is_checked(client, sessions):
    job_id = trained_job(client, sessions, iris_job(epochs=1))
    resp = client.get(f"/v1/jobs/{job_id}/weights?format=pickle")
    assert resp.status_code == 422 and resp.get_json()["errors"][0]["path"] == "format"


def test_health(client):
    assert client.get("/livez").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["checks"] == {"database": "ok", "broker": "ok"}


def test_spec_is_stored_with_defaults_applied(client):
    body = copy.deepcopy(iris_job())
    job = submit(client, body).get_json()
    assert job["model"]["layers"][0]["kernel_initializer"] == "glorot_uniform"
    assert job["training"]["shuffle"] is True


NAMES = np.array(["setosa", "versicolor", "virginica"])


def labelled_iris_job(keep=("setosa", "versicolor", "virginica"), **kw) -> dict:
    body = iris_job(**kw)
    names = NAMES[np.asarray(body["dataset"]["targets"])]
    rows = np.isin(names, keep)
    body["dataset"] = {"features": np.asarray(body["dataset"]["features"])[rows].tolist(),
                       "targets": names[rows].tolist()}
    return body


def test_class_labels_must_match_the_output_units(client):
    """Predict answers unit i with the i-th label: with 2 labels and 3 softmax units the third
    unit had no label, and predict answered 500 for the rows it won."""
    resp = submit(client, labelled_iris_job(keep=("setosa", "virginica"), epochs=1))
    assert resp.status_code == 422, resp.get_json()
    error = resp.get_json()["errors"][0]
    assert error["path"] == "dataset.targets"
    assert error["message"].startswith("has 2 class labels ('setosa', 'virginica') and the output layer gives 3")
    binary = {"model": {"input_shape": [1], "layers": [{"type": "dense", "units": 1, "activation": "sigmoid"}],
                        "loss": "binary_crossentropy"},
              "training": {"epochs": 1}, "dataset": {"features": [[0], [1]], "targets": ["no", "yes"]}}
    assert submit(client, binary).status_code == 202  # one sigmoid unit: two classes


def test_fine_tuning_on_other_classes_is_refused(client, sessions):
    """Labels are sorted per dataset: a child trained on setosa and virginica only, from a parent
    that learned all three, had the parent's 'versicolor' unit answer 'virginica'."""
    parent = trained_job(client, sessions, labelled_iris_job(epochs=2))
    other = labelled_iris_job(epochs=1)
    other["dataset"]["targets"] = [t.replace("virginica", "virginia") for t in other["dataset"]["targets"]]
    resp = submit(client, {**other, "init_from": parent})
    assert resp.status_code == 422, resp.get_json()
    error = resp.get_json()["errors"][0]
    assert error["path"] == "dataset.targets" and f"init_from job {parent} learned" in error["message"]
    same = submit(client, {**labelled_iris_job(epochs=1), "init_from": parent})
    assert same.status_code == 202, same.get_json()
    ds = client.post("/v1/datasets", json=other["dataset"]).get_json()["id"]
    resp = submit(client, {**other, "dataset": None, "dataset_id": ds, "init_from": parent})
    assert resp.status_code == 422 and resp.get_json()["errors"][0]["path"] == "dataset_id"
    # class indices where the parent learned labels, and labels where it learned indices
    indices = submit(client, {**iris_job(epochs=1), "init_from": parent})
    assert indices.status_code == 422 and "has class indices or numbers" in indices.get_json()["errors"][0]["message"]
    numeric_parent = trained_job(client, sessions, iris_job(epochs=1))
    resp = submit(client, {**labelled_iris_job(epochs=1), "init_from": numeric_parent})
    assert resp.status_code == 422 and "learned class indices or numbers" in resp.get_json()["errors"][0]["message"]


def test_predict_with_fewer_labels_than_classes_is_a_409_not_a_500(client, sessions):
    """A job accepted before submission checked the labels against the output units."""
    job_id = trained_job(client, sessions, labelled_iris_job(epochs=1))
    with sessions.begin() as s:
        ds = s.get(Dataset, s.get(Job, job_id).dataset_id)
        ds.class_labels = ["setosa", "versicolor"]
    resp = client.post(f"/v1/jobs/{job_id}/predict", json={"inputs": [[5.0, 3.4, 1.5, 0.2]]})
    assert resp.status_code == 409 and resp.get_json()["code"] == "labels_mismatch", resp.get_json()


def test_a_last_page_that_is_full_has_no_next_cursor(client):
    """Rows that are an exact multiple of `limit`: the last page is full, and no `next` sends
    the client for an empty page."""
    for _ in range(2):
        assert submit(client, iris_job(epochs=1)).status_code == 202
    for path, key in (("/v1/jobs", "jobs"), ("/v1/datasets", "datasets")):
        body = client.get(f"{path}?limit=2").get_json()
        assert len(body[key]) == 2 and body["next"] is None, body
        first = client.get(f"{path}?limit=1").get_json()
        assert client.get(f"{path}?limit=1&next={first['next']}").get_json()["next"] is None


def test_weights_come_layer_by_layer_in_network_order(client, sessions):
    """Sorted by name, dense_10 came before dense_2 and batch_norm_0 before dense_0, and the
    dashboard drew the layers out of order."""
    layers = [{"type": "dense", "units": 4, "activation": "relu"}, {"type": "batch_norm"},
              {"type": "residual", "layers": [{"type": "dense", "units": 4}]},
              *[{"type": "dense", "units": 4, "activation": "relu"}] * 9,
              {"type": "dense", "units": 3, "activation": "softmax"}]
    body = iris_job(epochs=1)
    body["model"]["layers"] = layers
    job_id = trained_job(client, sessions, body)
    names = [w["name"] for w in client.get(f"/v1/jobs/{job_id}/weights").get_json()["weights"]]
    layer_order = list(dict.fromkeys(n.split("/")[0] for n in names))
    assert layer_order == ["dense_0", "batch_norm_0", "residual_0", *[f"dense_{i}" for i in range(1, 11)]]
    assert names[:7] == ["dense_0/kernel", "dense_0/bias", "batch_norm_0/gamma", "batch_norm_0/beta",
                         "batch_norm_0/moving_mean", "batch_norm_0/moving_variance", "residual_0/dense_0/kernel"]
    npz = np.load(io.BytesIO(client.get(f"/v1/jobs/{job_id}/weights?format=npz").data), allow_pickle=False)
    assert list(npz.files) == names


def test_a_dataset_name_is_not_empty(client):
    """A dataset name "" was stored as no name at all."""
    x, y = iris()
    resp = client.post("/v1/datasets", json={"features": x.tolist(), "targets": y.tolist(), "name": ""})
    assert resp.status_code == 422 and resp.get_json()["errors"][0]["path"] == "name"


def test_an_inline_dataset_is_stored_as_given_not_in_the_models_dtype(client, sessions):
    """A float32 job stored its inline data as float32: a float64 job on the same dataset_id then
    trained on rounded values (123456789.123 became 123456792)."""
    body = iris_job(epochs=1)
    body["dataset"]["features"][0][0] = 123456789.123
    job = client.get(f"/v1/jobs/{submit(client, body).get_json()['id']}").get_json()
    ds = client.get(f"/v1/datasets/{job['dataset_id']}").get_json()
    assert ds["dtype"] == "float64"
    with sessions() as s:
        from core.store import dataset_arrays

        features, _ = dataset_arrays(s.get(Dataset, job["dataset_id"]))
    assert features[0, 0] == 123456789.123


def test_numbers_given_as_class_labels_are_told_to_come_as_strings(client):
    """Wine's classes 1..3 for three softmax units: refused, as numbers are class indices; the
    message now says how to send them as labels."""
    body = iris_job(epochs=1)
    body["dataset"]["targets"] = [t + 1 for t in body["dataset"]["targets"]]
    resp = submit(client, body)
    assert resp.status_code == 422
    message = resp.get_json()["errors"][0]["message"]
    assert "0..2" in message and "as strings" in message, message
    body["dataset"]["targets"] = [str(t) for t in body["dataset"]["targets"]]
    assert submit(client, body).status_code == 202


def test_fine_tuning_on_some_of_the_parents_classes_trains_its_units_for_them(client, sessions):
    """New samples of two of the parent's three classes were refused (a dataset's labels are
    sorted on their own, so virginica would have been index 1, the parent's versicolor unit).
    They now train the parent's units for their classes, and predict answers with all three
    of the parent's labels, in the parent's order."""
    parent = trained_job(client, sessions, labelled_iris_job(epochs=40))
    child = labelled_iris_job(keep=("setosa", "virginica"), epochs=40)
    resp = submit(client, {**child, "init_from": parent})
    assert resp.status_code == 202, resp.get_json()
    run_job(sessions, resp.get_json()["id"])
    virginica = [row for row, t in zip(child["dataset"]["features"], child["dataset"]["targets"], strict=True)
                 if t == "virginica"]
    answer = client.post(f"/v1/jobs/{resp.get_json()['id']}/predict", json={"inputs": virginica}).get_json()
    assert answer["classes"] == ["setosa", "versicolor", "virginica"], answer
    assert answer["predictions"].count("virginica") >= 0.9 * len(virginica), answer["predictions"]
    assert client.get(f"/v1/jobs/{resp.get_json()['id']}").get_json()["metrics"]["accuracy"] > 0.9

    # an uploaded dataset, and a retry of the fine-tune, do the same
    ds = client.post("/v1/datasets", json=child["dataset"]).get_json()["id"]
    again = submit(client, {**child, "dataset": None, "dataset_id": ds, "init_from": parent,
                            "training": {**child["training"], "epochs": 1}})
    assert again.status_code == 202, again.get_json()
    client.post(f"/v1/jobs/{again.get_json()['id']}/cancel")
    retried = client.post(f"/v1/jobs/{again.get_json()['id']}/retry")
    assert retried.status_code == 202, retried.get_json()
    run_job(sessions, retried.get_json()["id"])
    answer = client.post(f"/v1/jobs/{retried.get_json()['id']}/predict", json={"inputs": virginica}).get_json()
    assert answer["classes"] == ["setosa", "versicolor", "virginica"], answer

    # a class the parent never learned is refused, naming it
    other = labelled_iris_job(keep=("setosa", "virginica"), epochs=1)
    other["dataset"]["targets"] = [t.replace("virginica", "virginia") for t in other["dataset"]["targets"]]
    resp = submit(client, {**other, "init_from": parent})
    assert resp.status_code == 422
    message = resp.get_json()["errors"][0]["message"]
    assert message.startswith("has the classes ['virginia'], but init_from job"), message


def test_a_normalization_layer_lets_predict_take_raw_features(client, sessions):
    """Wine's features span 0.1 to 1,600; the examples scale them beforehand, and predict then
    needs the same scaling, which nothing kept. A first `normalization` layer learns it from the
    training split and keeps it with the weights."""
    from sklearn.datasets import load_wine

    x, y = load_wine(return_X_y=True)
    body = {"model": {"input_shape": [13], "loss": "categorical_crossentropy",
                      "layers": [{"type": "normalization"}, {"type": "dense", "units": 16, "activation": "relu"},
                                 {"type": "dense", "units": 3, "activation": "softmax"}]},
            "training": {"epochs": 40, "batch_size": 16, "seed": 0, "validation_split": 0.2},
            "dataset": {"features": x.tolist(), "targets": y.tolist()}}
    job_id = trained_job(client, sessions, body)
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "succeeded" and job["metrics"]["val_accuracy"] > 0.9, job
    weights = {w["name"]: w for w in client.get(f"/v1/jobs/{job_id}/weights").get_json()["weights"]}
    assert np.all(np.array(weights["normalization_0/variance"]["values"]) > 0)
    pred = client.post(f"/v1/jobs/{job_id}/predict", json={"inputs": x.tolist()}).get_json()
    assert np.mean(np.array(pred["predictions"]) == y) > 0.95
    # the layer is documented with the others
    schema = client.get("/openapi.json").get_json()
    assert "normalization" in json.dumps(schema)
