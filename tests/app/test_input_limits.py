"""Limits on what a client sends, enforced before the expensive work: dataset sizes read from
headers, list lengths and CSV rows as they come (never after converting everything), client
charsets that fail to decode, keys given twice in a JSON object, and over-long names. Every
bad input is a 4xx naming the field; never a 500."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
from sqlalchemy import func, select

import app.datasets
import app.datasets_api
import app.jobs
from app import create_app
from core.db import Job, WeightArray
from tests.data import iris, iris_job

PROBLEM = "application/problem+json"


@pytest.fixture
def limited(migrated):
    """An app with its own limits: limited(max_rows=5).test_client()."""
    apps = []

    def make(**limits):
        apps.append(create_app(dataclasses.replace(migrated, **limits)))
        return apps[-1]

    yield make
    for application in apps:
        application.extensions["backprop"]["engine"].dispose()


def must_not_run(*_args, **_kwargs):
    raise AssertionError("reached the expensive path after a limit was exceeded")


def error(resp, status: int = 422) -> dict:
    assert resp.status_code == status, resp.get_json()
    assert resp.mimetype == PROBLEM
    return resp.get_json()["errors"][0]


def npz(compressed: bool = True, **arrays) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def upload(client, query: str = "", **files):
    form = {k: (io.BytesIO(v), f"{k}.bin") if isinstance(v, bytes) else v for k, v in files.items()}
    return client.post(f"/v1/datasets{query}", data=form, content_type="multipart/form-data")


# -- 1. dataset limits before the data is read ------------------------------------------------

def test_npz_rows_are_refused_from_the_header_before_any_array_is_inflated(limited, monkeypatch):
    client = limited(max_rows=1000).test_client()
    monkeypatch.setattr(app.datasets, "read_member", must_not_run)
    monkeypatch.setattr(app.datasets_api, "features_array", must_not_run)
    data = npz(features=np.zeros((100_000, 10), np.int8), targets=np.zeros(100_000, np.int8))
    assert len(data) < 5000  # a few KB that would inflate to a million values
    e = error(upload(client, file=data))
    assert e == {"path": "features", "message": "has 100000 rows; the limit is 1000"}


@pytest.mark.parametrize("limits, arrays, path, message", [
    ({"max_dataset_values": 100}, {"features": np.zeros((20, 6)), "targets": np.arange(20) % 2},
     "features", "holds 120 values; the limit is 100"),
    ({"max_sample_values": 5}, {"features": np.zeros((4, 6)), "targets": np.arange(4) % 2},
     "features", "each sample has 6 values; the limit is 5"),
    ({"max_rows": 5}, {"features": np.zeros((5, 2)), "targets": np.arange(6) % 2}, "targets", "has 6 rows"),
    ({"max_sample_values": 5}, {"features": np.zeros((4, 2)), "targets": np.arange(4) % 2,
                                "feature_names": np.array(list("abcdef"))}, "feature_names", "has 6 names"),
    ({}, {"features": np.array([["a", "b"], ["c", "d"]]), "targets": np.arange(2)}, "features",
     "must be numbers, got dtype <U1"),
])
def test_every_npz_array_meets_the_limits_from_its_header(limited, monkeypatch, limits, arrays, path, message):
    client = limited(**limits).test_client()
    monkeypatch.setattr(app.datasets, "read_member", must_not_run)
    e = error(upload(client, file=npz(**arrays)))
    assert e["path"] == path and message in e["message"], e


def test_npy_features_are_refused_from_the_header_before_they_are_read(limited, monkeypatch):
    client = limited(max_rows=5).test_client()
    monkeypatch.setattr(np, "load", must_not_run)
    e = error(upload(client, file=npy(np.zeros((50, 3), np.int8)), targets=npy(np.arange(50) % 2)))
    assert e == {"path": "file", "message": "has 50 rows; the limit is 5"}


def _csv(rows: int, columns: int = 2, bad_line: int | None = None) -> str:
    lines = [",".join(f"c{j}" for j in range(columns)) + ",y"]
    lines += [",".join(["1"] * columns) + f",{i % 2}" for i in range(rows)]
    if bad_line is not None:
        lines[bad_line - 1] = "1"  # ragged: if the reader gets there, it says so instead
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("limits, text, message", [
    ({"max_rows": 5}, _csv(50, bad_line=8), "has more than 5 rows; the limit is 5"),
    ({"max_dataset_values": 20}, _csv(50, columns=4, bad_line=8), "holds more than 20 values; the limit is 20"),
    ({"max_sample_values": 3}, _csv(50, columns=4, bad_line=3), "each sample has 4 values; the limit is 3"),
])
def test_csv_reading_stops_at_the_limits(limited, limits, text, message):
    client = limited(**limits).test_client()
    e = error(client.post("/v1/datasets?target=y", data=text, content_type="text/csv"))
    assert e == {"path": "features", "message": message}


def test_csv_exactly_at_the_row_limit_is_stored(limited):
    client = limited(max_rows=6).test_client()
    assert client.post("/v1/datasets?target=y", data=_csv(6), content_type="text/csv").status_code == 201


@pytest.mark.parametrize("limits, body, path, message", [
    ({"max_rows": 5}, {"features": [[0, 1]] * 50, "targets": [0, 1] * 25}, "features", "has 50 rows"),
    ({"max_rows": 5}, {"features": [[0, 1]] * 4, "targets": [0, 1] * 25}, "targets", "has 50 rows"),
    ({"max_sample_values": 3}, {"features": [[0, 1, 2, 3]] * 4, "targets": [0, 1] * 2}, "features",
     "each sample has 4 values"),
    ({"max_dataset_values": 30}, {"features": [[[0, 1], [2, 3]]] * 10, "targets": [0, 1] * 5}, "features",
     "holds 40 values"),
])
def test_json_dataset_lists_are_measured_before_they_become_arrays(limited, monkeypatch, limits, body, path,
                                                                    message):
    client = limited(**limits).test_client()
    monkeypatch.setattr(app.datasets_api, "numeric_array", must_not_run)
    e = error(client.post("/v1/datasets", json=body))
    assert e["path"] == path and message in e["message"], e


def test_a_jobs_inline_dataset_is_measured_before_it_becomes_an_array(limited, monkeypatch):
    client = limited(max_dataset_values=400).test_client()
    monkeypatch.setattr(app.jobs, "numeric_array", must_not_run)
    e = error(client.post("/v1/jobs", json=iris_job(epochs=1)))  # 150 rows x 4 values
    assert e == {"path": "dataset.features", "message": "holds 600 values; the limit is 400"}


# -- 2. a client's charset that fails to decode ------------------------------------------------

@pytest.mark.parametrize("charset", ["punycode", "undefined", "rot13", "no-such-charset"])
def test_a_csv_charset_that_cannot_decode_is_a_422_naming_it(client, charset):
    resp = client.post("/v1/datasets?target=b", data=b"a,b\n1,0\n2,1\n", content_type=f"text/csv; charset={charset}")
    e = error(resp)
    assert e["path"] == "body" and f"is not {charset} text" in e["message"]


def test_a_json_body_is_decoded_from_its_bytes_whatever_charset_it_names(client):
    body = json.dumps({"features": [[0], [1], [2], [3]], "targets": [0, 1, 0, 1]}).encode()
    resp = client.post("/v1/datasets", data=body, content_type="application/json; charset=punycode")
    assert resp.status_code == 201, resp.get_json()


# -- 3. keys given twice ----------------------------------------------------------------------

@pytest.mark.parametrize("url, raw, path", [
    ("/v1/jobs", '{"model": 1, "model": {"input_shape": [4]}, "dataset_id": "x"}', "model"),
    ("/v1/jobs", '{"model": {"input_shape": [4], "layers": [{"type": "dense", "units": 2, "units": 3}]}}',
     "model.layers[0].units"),
    ("/v1/datasets", '{"features": [[0], [1]], "targets": [0, 1], "targets": [1, 0]}', "targets"),
    ("/v1/datasets", '{"": 1, "": 2}', '""'),
])
def test_a_key_given_twice_is_refused_naming_its_path(client, url, raw, path):
    resp = client.post(url, data=raw, content_type="application/json")
    e = error(resp, 400)
    assert resp.get_json()["code"] == "invalid_json"
    assert e == {"path": path, "message": "the key is given more than once in its object"}


# -- 4. names and labels are bounded ----------------------------------------------------------

LONG = "x" * 257
OK = "y" * 256


def _iris_body(**changes) -> dict:
    x, y = iris()
    return {"features": x[:6].tolist(), "targets": [0, 1, 2, 0, 1, 2], **changes}


@pytest.mark.parametrize("url, body, path", [
    ("/v1/datasets", _iris_body(targets=["a", "b", LONG, "a", "b", "a"]), "targets[2]"),
    ("/v1/datasets", _iris_body(feature_names=["a", LONG, "c", "d"]), "feature_names[1]"),
    ("/v1/jobs", {**iris_job(epochs=1), "dataset": {**_iris_body(), "targets": [LONG, "a"] * 3}}, "dataset.targets[0]"),
    ("/v1/jobs", {**iris_job(epochs=1), "dataset": _iris_body(feature_names=[LONG, "b", "c", "d"])},
     "dataset.feature_names[0]"),
])
def test_json_labels_and_feature_names_are_at_most_256_characters(client, url, body, path):
    e = error(client.post(url, json=body))
    assert e["path"] == path and "256 characters" in e["message"], e


@pytest.mark.parametrize("text, target, path, fragment", [
    (f"a,{LONG}\n1,0\n2,1\n", "y", "line 1", "column 2: a column name may have at most 256 characters"),
    (f"a,y\n1,x\n2,{LONG}\n", "y", "line 3, column 'y'", "a class label may have at most 256 characters"),
    ("a,y\n1,0\n2,1\n", LONG, "target", "256 characters"),
])
def test_csv_names_labels_and_the_target_are_at_most_256_characters(client, text, target, path, fragment):
    e = error(client.post(f"/v1/datasets?target={target}", data=text, content_type="text/csv"))
    assert e["path"] == path and fragment in e["message"], e


@pytest.mark.parametrize("arrays, path", [
    ({"targets": np.array(["a", LONG, "a", "b"])}, "targets[1]"),
    ({"targets": np.arange(4) % 2, "feature_names": np.array(["a", LONG])}, "feature_names[1]"),
])
def test_npz_labels_and_feature_names_are_at_most_256_characters(client, arrays, path):
    e = error(upload(client, file=npz(features=np.zeros((4, 2)), **arrays)))
    assert e["path"] == path and "at most 256 characters" in e["message"], e


def test_names_of_256_characters_are_kept(client):
    text = f"a,{OK}\n1,{OK}\n2,b\n"
    body = client.post(f"/v1/datasets?target={OK}", data=text, content_type="text/csv").get_json()
    assert body["class_labels"] == ["b", OK], body


def test_a_file_name_too_long_for_a_dataset_name_is_refused_unless_a_name_is_given(client):
    form = lambda **f: {"file": (io.BytesIO(b"a,y\n1,0\n2,1\n"), "d" * 300 + ".csv"), "target": "y", **f}  # noqa: E731
    e = error(client.post("/v1/datasets", data=form(), content_type="multipart/form-data"))
    assert e["path"] == "name" and "at most 255" in e["message"]
    resp = client.post("/v1/datasets", data=form(name="short"), content_type="multipart/form-data")
    assert resp.status_code == 201 and resp.get_json()["name"] == "short"


def test_a_wide_csv_is_read_in_a_few_times_its_size(app):
    """Every cell was kept as a Python string (about 50 bytes) until the end, after a copy of the
    text at 4 bytes a character: a 63 MB CSV of a thousand columns took the web process to
    2.5 GB. Now the floats themselves (8 bytes for this 3-byte cell) are most of it."""
    import tracemalloc

    from app.datasets import parse_csv

    columns = 500
    text = ",".join(f"f{i}" for i in range(columns)) + ",y\n" + ("10," * columns + "1\n") * 2000
    with app.app_context():
        tracemalloc.start()
        try:
            x, y, _, names = parse_csv(text, "y", None)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert x.shape == (2000, columns) and len(names) == columns and (x == 10).all() and (y == 1).all()
    assert peak < 5 * len(text), (peak, len(text))


@pytest.mark.parametrize("text,rows", [("a,b\r1,0\n2,1", 2), ("a,b\n1,0\r2,1\n3,0\r", 3),
                                       ("a,b\r\n1,0\r2,1\n3,0", 3)])
def test_a_csv_with_mixed_line_ends_is_read_whole(app, text, rows):
    """Lone CRs and LFs in one file: the rows outnumbered either count, and the array sized by
    the larger one overflowed (a 500)."""
    from app.datasets import parse_csv

    with app.app_context():
        x, y, _, _ = parse_csv(text, "b", None)
    assert x[:, 0].tolist() == list(range(1, rows + 1))


def test_large_json_bodies_are_parsed_a_few_at_a_time(limited, monkeypatch):
    """A JSON document takes 8-20x its size once parsed (60 MB of numbers: +490 MB); 16 web
    threads parsing such bodies at once could take a host's memory. Bodies over 8 MB take one of
    web_threads / 4 slots, or are a 503 at once that says what to do (waiting held a thread)."""
    import app.schemas

    monkeypatch.setattr(app.schemas, "LARGE_JSON_BYTES", 1000)
    application = limited(web_threads=4)  # one slot
    client, slots = application.test_client(), application.extensions["backprop"]["large_bodies"]
    body = iris_job(epochs=1)
    assert slots.acquire(blocking=False)  # another request is parsing a large body
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 503 and resp.get_json()["code"] == "too_many_large_requests"
    assert resp.headers["Retry-After"] == "2" and "POST /v1/datasets" in resp.get_json()["detail"]
    assert client.post("/v1/jobs", json={"model": {}}).status_code == 422  # small bodies never wait
    slots.release()
    assert client.post("/v1/jobs", json=body).status_code == 202
    bad = {**body, "training": {"epochs": 0}}
    assert client.post("/v1/jobs", json=bad).status_code == 422
    # each request gave its slot back, the refused one included
    assert slots.acquire(blocking=False)
    slots.release()


def multipart(**files: bytes) -> dict:
    """A multipart body encoded here: the test client spools one over 500 KB to a file that it
    never closes (a ResourceWarning, an error in these tests)."""
    from werkzeug.datastructures import FileStorage
    from werkzeug.test import encode_multipart

    boundary, body = encode_multipart({k: FileStorage(io.BytesIO(v), f"{k}.bin") for k, v in files.items()})
    return {"data": body, "content_type": f"multipart/form-data; boundary={boundary}"}


def test_uploads_that_decode_to_much_data_are_decoded_a_few_at_a_time(limited, monkeypatch):
    """An .npz of zeros is tiny and decodes to a lot (1,000,000 x 32 zeros: 265 KB, 256 MB of
    arrays; six such uploads at once took a web process to 3.7 GB), a CSV to 8 bytes a cell. An
    upload whose decoded data passes 8 MB takes one of the web_threads / 4 slots of large JSON
    bodies, judged from the declared sizes, or is a 503 at once as they are."""
    application = limited(web_threads=4)  # one slot
    client, slots = application.test_client(), application.extensions["backprop"]["large_bodies"]
    big_npz = npz(features=np.zeros((40_000, 32)), targets=np.arange(40_000) % 2)  # 10 MB decoded
    assert len(big_npz) < 50_000
    big_csv = _csv(11_000, columns=100)  # 1.1 M cells: 8.8 MB as floats, 2.2 MB as text
    big_npy = {"file": npy(np.zeros((40_000, 32))), "targets": npy(np.arange(40_000) % 2)}
    uploads = [lambda: upload(client, file=big_npz),
               lambda: client.post("/v1/datasets?target=y", data=big_csv, content_type="text/csv"),
               lambda: client.post("/v1/datasets", **multipart(**big_npy))]
    assert slots.acquire(blocking=False)  # another request is decoding a large body
    for send in uploads:
        resp = send()
        assert resp.status_code == 503 and resp.get_json()["code"] == "too_many_large_requests", resp.get_json()
        assert resp.headers["Retry-After"] == "2" and "decoding" in resp.get_json()["detail"]
    small = npz(features=np.zeros((40, 32)), targets=np.arange(40) % 2)
    assert upload(client, file=small).status_code == 201  # small uploads never wait
    slots.release()

    free_while_decoding = []

    def decoding(real):
        def spy(*args, **kwargs):
            free = slots.acquire(blocking=False)
            if free:
                slots.release()
            free_while_decoding.append(free)
            return real(*args, **kwargs)
        return spy

    monkeypatch.setattr(app.datasets, "load_npy", decoding(app.datasets.load_npy))
    monkeypatch.setattr(app.datasets_api, "load_npy", decoding(app.datasets_api.load_npy))
    monkeypatch.setattr(app.datasets, "_csv_floats", decoding(app.datasets._csv_floats))
    for send in uploads:
        assert send().status_code == 201
    assert free_while_decoding and not any(free_while_decoding)  # each held the slot while it decoded
    assert slots.acquire(blocking=False)  # and gave it back
    slots.release()


def test_a_chunked_csv_body_over_the_size_limit_is_a_413(limited):
    """Without a Content-Length, a body is cut at the limit rather than refused: a 75 MB CSV
    was stored as its first 838,858 rows. It is a 413, as with a Content-Length."""
    client = limited(max_request_bytes=2000).test_client()
    chunked = {"headers": {"Transfer-Encoding": "chunked"}, "environ_overrides": {"wsgi.input_terminated": True}}
    text = _csv(400)
    assert len(text) > 2000
    for how in (chunked, {}):
        resp = client.post("/v1/datasets?target=y", data=text, content_type="text/csv", **how)
        assert resp.status_code == 413 and resp.get_json()["code"] == "request_too_large", resp.get_json()
    resp = client.post("/v1/datasets?target=y", data=_csv(100), content_type="text/csv", **chunked)
    assert resp.status_code == 201 and resp.get_json()["n_samples"] == 100, resp.get_json()


def test_a_tenants_datasets_stay_within_their_storage_limit(limited):
    """Uploads of a few hundred KB each (an .npz of zeros holds 256 MB of arrays) grew the
    database by gigabytes, without end. A tenant's stored datasets, inline ones included, hold
    at most max_tenant_dataset_bytes; deleting makes room again."""
    one = 20 * 4 * 8 + 20 * 8  # 20 rows of 4 float64 features, 20 int64 targets
    client = limited(max_tenant_dataset_bytes=2 * one + 10).test_client()
    data = {"features": np.zeros((20, 4)).tolist(), "targets": [0, 1] * 10}
    first = client.post("/v1/datasets", json=data).get_json()["id"]
    job = {**iris_job(epochs=1), "dataset": data}
    assert client.post("/v1/jobs", json=job).status_code == 202  # its inline dataset is the second
    for send in (lambda: client.post("/v1/datasets", json=data), lambda: client.post("/v1/jobs", json=job),
                 lambda: upload(client, file=npz(features=np.zeros((20, 4)), targets=np.arange(20) % 2))):
        resp = send()
        assert resp.status_code == 409 and resp.get_json()["code"] == "dataset_storage_full", resp.get_json()
        assert f"already hold {2 * one}" in resp.get_json()["detail"]
    assert client.delete(f"/v1/datasets/{first}").status_code == 204
    assert client.post("/v1/datasets", json=data).status_code == 201


def test_a_tenants_jobs_stay_within_their_storage_limit(limited):
    """A 35 KB body (one sample, one epoch, ten million float64 weights) stored 80 MB of weights,
    and a job's epoch history grows with its epochs and layers: with twenty jobs at a time and
    every finished one kept, a tenant grew the database shared by all without end. Each job now
    counts what it may store, from its submission; deleting finished jobs makes room again."""
    from core.nn import check_training_spec
    from core.nn.network import shapes_only
    from core.store import job_storage_bytes
    from worker.training import run_job

    big = {"model": {"input_shape": [1000], "loss": "mse", "dtype": "float64",
                     "layers": [{"type": "dense", "units": 1000}]},
           "training": {"epochs": 3, "batch_size": 1},
           "dataset": {"features": [[0.0] * 1000], "targets": [[0.0] * 1000]}}
    net = shapes_only(big["model"])
    one = job_storage_bytes(net, check_training_spec(big["training"]))
    assert one > (1000 * 1000 + 1000) * 8  # the weights, and the rest
    application = limited(max_tenant_job_bytes=2 * one + 10)
    client, sessions = application.test_client(), application.extensions["backprop"]["sessions"]
    first = client.post("/v1/jobs", json=big).get_json()["id"]
    with sessions() as s:
        assert s.get(Job, first).storage_bytes == one
    second = client.post("/v1/jobs", json=big)
    assert second.status_code == 202, second.get_json()
    assert client.post(f"/v1/jobs/{second.get_json()['id']}/cancel").status_code == 202  # still counted
    for resp in (client.post("/v1/jobs", json=big), client.post(f"/v1/jobs/{second.get_json()['id']}/retry")):
        assert resp.status_code == 409 and resp.get_json()["code"] == "job_storage_full", resp.get_json()
        assert f"may store {one} bytes" in resp.get_json()["detail"]
        assert f"already may hold {2 * one}" in resp.get_json()["detail"]
    run_job(sessions, first)
    with sessions() as s:  # the bound holds what the job stored
        weights = s.scalar(select(func.sum(func.length(WeightArray.data))).where(WeightArray.job_id == first))
        assert 0 < weights <= one
    assert client.delete(f"/v1/jobs/{first}").status_code == 204
    assert client.post("/v1/jobs", json=big).status_code == 202


def test_the_dataset_storage_limit_counts_bytes_on_postgres(migrated, postgres_url):
    from tests.conftest import migrate

    migrate(postgres_url)
    application = create_app(dataclasses.replace(migrated, database_url=postgres_url, auth="off",
                                                 max_tenant_dataset_bytes=2000))
    client = application.test_client()
    try:
        data = {"features": np.zeros((20, 4)).tolist(), "targets": [0, 1] * 10}  # 640 + 160 bytes
        assert client.post("/v1/datasets", json=data).status_code == 201
        assert client.post("/v1/datasets", json=data).status_code == 201
        resp = client.post("/v1/datasets", json=data)
        assert resp.status_code == 409 and "already hold 1600" in resp.get_json()["detail"], resp.get_json()
    finally:
        application.extensions["backprop"]["engine"].dispose()
