"""The jobs API beyond submit-and-train: list filters and cursor pages, cancel, retry, delete,
ETA, paged and downsampled epochs, diagnostics, fine-tuning, Idempotency-Key, X-Request-ID,
readiness, and the OpenAPI document. A job is trained by calling the worker's own run_job,
as the Celery task does (in a thread when a test needs it running)."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import quote

import numpy as np
import pytest
from sqlalchemy import func, select, update

import app.jobs
from core.db import Checkpoint, Dataset, EpochRecord, IdempotencyRecord, Job, JobStatus, WeightArray
from core.db.models import utcnow
from tests.data import iris, iris_job
from worker.training import run_job

PROBLEM = "application/problem+json"


def submit(client, body, **headers):
    return client.post("/v1/jobs", data=json.dumps(body), content_type="application/json", headers=headers)


def queued_job(client, body=None) -> str:
    resp = submit(client, body or iris_job(epochs=5))
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["id"]


def trained_job(client, sessions, body=None) -> str:
    job_id = queued_job(client, body)
    run_job(sessions, job_id)
    return job_id


def set_job(sessions, job_id, **values) -> None:
    with sessions.begin() as s:
        s.execute(update(Job).where(Job.id == job_id).values(**values))


def problem(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True))
    assert resp.mimetype == PROBLEM
    body = resp.get_json()
    assert body["status"] == status and body["code"] == code, body
    assert body["type"].endswith(code) and body["title"] and body["detail"]
    return body


def error_paths(body: dict) -> list[str]:
    return [e["path"] for e in body["errors"]]


# -- list: filters and cursor pages --------------------------------------------------------------


@pytest.fixture
def six_jobs(client, sessions):
    """Six jobs, created a minute apart (oldest first), in several states and on two datasets."""
    ids = [queued_job(client) for _ in range(6)]
    base = datetime(2030, 1, 1, tzinfo=UTC)
    for i, job_id in enumerate(ids):
        set_job(sessions, job_id, created_at=base + timedelta(minutes=i))
    for i in (0, 2, 3):
        set_job(sessions, ids[i], status=JobStatus.SUCCEEDED, finished_at=utcnow())
    set_job(sessions, ids[4], status=JobStatus.FAILED, finished_at=utcnow())
    return ids, base


def listed(client, query: str = "") -> tuple[list[str], str | None]:
    resp = client.get(f"/v1/jobs{query}")
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    return [j["id"] for j in body["jobs"]], body["next"]


def test_list_is_newest_first_in_cursor_pages(client, six_jobs):
    ids, _ = six_jobs
    newest_first = ids[::-1]
    assert listed(client)[0] == newest_first
    seen, cursor, pages = [], None, 0
    while True:
        page, cursor = listed(client, "?limit=4" + (f"&next={cursor}" if cursor else ""))
        seen += page
        pages += 1
        if cursor is None:
            break
    assert seen == newest_first and pages == 2


def test_status_filter_applies_before_the_limit(client, six_jobs):
    ids, _ = six_jobs
    succeeded = [ids[3], ids[2], ids[0]]
    first, cursor = listed(client, "?status=succeeded&limit=2")
    assert first == succeeded[:2] and cursor
    rest, cursor = listed(client, f"?status=succeeded&limit=2&next={cursor}")
    assert rest == succeeded[2:] and cursor is None
    both, _ = listed(client, "?status=failed,queued")
    assert both == [ids[5], ids[4], ids[1]]
    for bad in ("runing", ",", "%20"):  # unknown, or naming no status at all (it used to list none)
        resp = client.get(f"/v1/jobs?status={bad}")
        assert resp.status_code == 422 and resp.get_json()["errors"][0]["path"] == "status", resp.get_json()


def test_created_after_and_before(client, six_jobs):
    ids, base = six_jobs
    after = quote((base + timedelta(minutes=1, seconds=30)).isoformat())
    before = (base + timedelta(minutes=4, seconds=30)).isoformat().replace("+00:00", "Z")
    assert listed(client, f"?created_after={after}")[0] == [ids[5], ids[4], ids[3], ids[2]]
    assert listed(client, f"?created_before={before}")[0] == [ids[4], ids[3], ids[2], ids[1], ids[0]]
    window, _ = listed(client, f"?created_after={after}&created_before={before}&limit=1")
    assert window == [ids[4]]


def test_created_after_in_another_utc_offset_means_the_same_instant(client, six_jobs):
    ids, base = six_jobs
    instant = base + timedelta(minutes=3, seconds=30)
    utc, _ = listed(client, "?created_after=" + instant.isoformat().replace("+00:00", "Z"))
    tokyo = instant.astimezone(timezone(timedelta(hours=9)))
    offset, _ = listed(client, "?created_after=" + quote(tokyo.isoformat()))
    assert tokyo.isoformat().endswith("+09:00")
    assert utc == offset == [ids[5], ids[4]]
    # a "+" left unencoded arrives as a space; the offset is still unambiguous
    unencoded, _ = listed(client, "?created_after=" + tokyo.isoformat())
    assert unencoded == utc


def test_dataset_filter(client, sessions):
    first = queued_job(client)
    dataset_id = client.get(f"/v1/jobs/{first}").get_json()["dataset_id"]
    body = iris_job(epochs=5)
    del body["dataset"]
    body["dataset_id"] = dataset_id
    second = queued_job(client, body)
    other = queued_job(client)
    assert listed(client, f"?dataset_id={dataset_id}")[0] == [second, first]
    assert listed(client, "?dataset_id=nope")[0] == []
    assert other in listed(client)[0]


@pytest.mark.parametrize("query, path", [
    ("?next=garbage!!", "next"),
    ("?next=" + "bm90IGEgY3Vyc29y", "next"),  # base64 of "not a cursor"
    ("?status=finished", "status"),
    ("?created_after=yesterday", "created_after"),
    ("?created_before=2030-13-01", "created_before"),
    ("?limit=0", "limit"),
    ("?limit=201", "limit"),
    ("?sort=asc", "sort"),
])
def test_bad_list_parameters_are_422(client, query, path):
    body = problem(client.get(f"/v1/jobs{query}"), 422, "validation_error")
    assert path in error_paths(body)


# -- cancel -------------------------------------------------------------------------------------


def test_cancel_a_queued_job_is_immediate(client, sessions):
    job_id = queued_job(client)
    resp = client.post(f"/v1/jobs/{job_id}/cancel")
    assert resp.status_code == 202 and resp.headers["Location"] == f"/v1/jobs/{job_id}"
    body = resp.get_json()
    assert body["status"] == "cancelled" and body["stop_reason"] == "cancelled" and body["finished_at"]
    run_job(sessions, job_id)  # the message still in the queue is a no-op
    assert client.get(f"/v1/jobs/{job_id}").get_json()["status"] == "cancelled"
    with sessions() as s:
        assert s.get(Job, job_id).attempts == 0


def slow_job(epochs: int = 100_000) -> dict:
    """An iris job whose epochs take long enough (tens of ms) to be told apart from the
    worker's heartbeat, which is how a running job learns that it was cancelled."""
    body = iris_job(epochs=epochs)
    x, y = iris()
    rows = np.repeat(x, 40, axis=0)
    body["dataset"] = {"features": rows.round(3).tolist(), "targets": np.repeat(y, 40).tolist()}
    body["model"]["layers"][0]["units"] = 128
    body["training"]["batch_size"] = 32
    return body


class Running:
    """run_job in a thread, with a heartbeat much shorter than an epoch; records when each
    epoch finished."""

    def __init__(self, sessions, settings, job_id: str, monkeypatch):
        from worker import training

        fast = dataclasses.replace(settings, heartbeat_seconds=0.01)
        self.thread = threading.Thread(target=run_job, args=(sessions, job_id), kwargs={"settings": fast})
        self.sessions, self.job_id = sessions, job_id
        self.finished: list[tuple[int, float]] = []
        on_epoch = training.EpochWriter.on_epoch

        def spy(writer, record, trainer):
            self.finished.append((record["epoch"], time.monotonic()))
            on_epoch(writer, record, trainer)

        monkeypatch.setattr(training.EpochWriter, "on_epoch", spy)

    def __enter__(self):
        self.thread.start()
        return self

    def wait_epochs(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.sessions() as s:
                if s.get(Job, self.job_id).epochs_done >= n:
                    return
            time.sleep(0.01)
        raise TimeoutError(f"job {self.job_id} did not reach epoch {n}")

    def __exit__(self, *exc):
        with self.sessions.begin() as s:  # however the test ended, stop the worker thread
            s.execute(update(Job).where(Job.id == self.job_id).values(cancel_requested=True))
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


def test_cancel_a_running_job_keeps_the_last_finished_epochs_weights(client, sessions, migrated, monkeypatch):
    job_id = queued_job(client, slow_job())
    with Running(sessions, migrated, job_id, monkeypatch) as run:
        run.wait_epochs(2)
        resp = client.post(f"/v1/jobs/{job_id}/cancel")
        # from the moment the cancel is committed: on a loaded machine the request itself can
        # take longer than an epoch (it waits its turn for SQLite's write lock)
        cancelled_at = time.monotonic()
        assert resp.status_code == 202
        assert resp.get_json()["status"] == "cancelling"
        assert client.get(f"/v1/jobs/{job_id}").get_json()["status"] in ("cancelling", "cancelled")
        again = client.post(f"/v1/jobs/{job_id}/cancel")  # harmless: still cancelling, or 409 once cancelled
        said = again.get_json()["code" if again.status_code == 409 else "status"]
        assert (again.status_code, said) in ((202, "cancelling"), (409, "job_finished"))
        run.thread.join(timeout=60)
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "cancelled" and job["stop_reason"] == "cancelled" and job["finished_at"]
    after_cancel = [epoch for epoch, at in run.finished if at > cancelled_at]
    assert len(after_cancel) <= 1, after_cancel  # stopped within one epoch
    done = job["progress"]["epoch"]
    assert done == run.finished[-1][0]  # every finished epoch was recorded

    weights = client.get(f"/v1/jobs/{job_id}/weights")
    assert weights.status_code == 200 and weights.get_json()["status"] == "cancelled"
    norms: dict[str, float] = {}
    for w in weights.get_json()["weights"]:
        norms[w["layer"]] = norms.get(w["layer"], 0.0) + float(np.sum(np.square(w["values"], dtype=np.float64)))
    last = client.get(f"/v1/jobs/{job_id}/epochs?after={done - 1}").get_json()["epochs"]
    assert [e["epoch"] for e in last] == [done]
    for layer, norm in last[0]["weight_norms"].items():  # the stored weights are that epoch's
        assert np.sqrt(norms[layer]) == pytest.approx(norm, rel=1e-5)


def test_cancel_a_finished_job_is_409(client, sessions):
    job_id = trained_job(client, sessions, iris_job(epochs=2))
    body = problem(client.post(f"/v1/jobs/{job_id}/cancel"), 409, "job_finished")
    assert body["job_status"] == "succeeded"
    problem(client.post("/v1/jobs/nope/cancel"), 404, "job_not_found")


# -- retry --------------------------------------------------------------------------------------


def test_retry_a_failed_job_makes_a_new_job(client, sessions, migrated):
    job_id = queued_job(client)
    set_job(sessions, job_id, status=JobStatus.FAILED, error="boom", stop_reason="error", finished_at=utcnow())
    resp = client.post(f"/v1/jobs/{job_id}/retry")
    assert resp.status_code == 202
    new = resp.get_json()
    assert new["id"] != job_id and new["retry_of"] == job_id and new["status"] == "queued"
    assert resp.headers["Location"] == f"/v1/jobs/{new['id']}"
    old = client.get(f"/v1/jobs/{job_id}").get_json()
    assert (new["model"], new["training"], new["dataset_id"]) == (old["model"], old["training"], old["dataset_id"])
    assert old["status"] == "failed"  # the failed job stays as it was
    run_job(sessions, new["id"])
    assert client.get(f"/v1/jobs/{new['id']}").get_json()["status"] == "succeeded"


def test_retry_a_cancelled_job(client):
    job_id = queued_job(client)
    client.post(f"/v1/jobs/{job_id}/cancel")
    resp = client.post(f"/v1/jobs/{job_id}/retry")
    assert resp.status_code == 202 and resp.get_json()["retry_of"] == job_id


def test_retry_needs_a_failed_or_cancelled_job(client, sessions):
    done = trained_job(client, sessions, iris_job(epochs=2))
    assert problem(client.post(f"/v1/jobs/{done}/retry"), 409, "job_not_retryable")["job_status"] == "succeeded"
    queued = queued_job(client)
    problem(client.post(f"/v1/jobs/{queued}/retry"), 409, "job_not_retryable")
    problem(client.post("/v1/jobs/nope/retry"), 404, "job_not_found")


@pytest.mark.parametrize("freeze", [["dense_0"], None])
def test_retry_of_a_fine_tune_whose_parent_is_gone_is_409(client, sessions, freeze):
    """Without frozen layers too: the retry had init_from null and trained from random weights,
    saying nothing. fine_tuned_from keeps the parent's id after it is deleted."""
    parent = trained_job(client, sessions, iris_job(epochs=2))
    body = iris_job(epochs=2)
    body["init_from"], body["freeze"] = parent, freeze
    child = trained_job(client, sessions, body)
    set_job(sessions, child, status=JobStatus.FAILED, stop_reason="error")
    retried = client.post(f"/v1/jobs/{child}/retry").get_json()
    assert retried["init_from"] == retried["fine_tuned_from"] == parent
    set_job(sessions, retried["id"], status=JobStatus.CANCELLED)
    assert client.delete(f"/v1/jobs/{parent}").status_code == 204
    gone = client.get(f"/v1/jobs/{child}").get_json()
    assert gone["init_from"] is None and gone["fine_tuned_from"] == parent
    detail = problem(client.post(f"/v1/jobs/{child}/retry"), 409, "init_from_deleted")["detail"]
    assert f"fine-tuned from job {parent}" in detail


# -- delete -------------------------------------------------------------------------------------


def test_delete_a_finished_job_removes_it_and_its_data(client, sessions):
    job_id = trained_job(client, sessions, iris_job(epochs=3))
    dataset_id = client.get(f"/v1/jobs/{job_id}").get_json()["dataset_id"]
    resp = client.delete(f"/v1/jobs/{job_id}")
    assert resp.status_code == 204 and resp.data == b""
    problem(client.get(f"/v1/jobs/{job_id}"), 404, "job_not_found")
    problem(client.get(f"/v1/jobs/{job_id}/epochs"), 404, "job_not_found")
    problem(client.delete(f"/v1/jobs/{job_id}"), 404, "job_not_found")
    with sessions() as s:
        for table in (EpochRecord, WeightArray, Checkpoint):
            assert s.scalar(select(func.count()).select_from(table).where(table.job_id == job_id)) == 0
        assert s.get(Dataset, dataset_id) is None  # its inline dataset went with it


def test_delete_an_active_job_is_409(client, sessions):
    job_id = queued_job(client)
    set_job(sessions, job_id, status=JobStatus.RUNNING, started_at=utcnow())
    assert problem(client.delete(f"/v1/jobs/{job_id}"), 409, "job_active")["job_status"] == "running"
    assert client.get(f"/v1/jobs/{job_id}").status_code == 200


def test_a_job_others_fine_tune_from_is_kept_until_they_ran(client, sessions):
    parent = trained_job(client, sessions, iris_job(epochs=3))
    body = iris_job(epochs=3)
    body["init_from"] = parent
    child = queued_job(client, body)
    problem(client.delete(f"/v1/jobs/{parent}"), 409, "job_in_use")
    run_job(sessions, child)
    assert client.delete(f"/v1/jobs/{parent}").status_code == 204
    assert client.get(f"/v1/jobs/{child}").get_json()["init_from"] is None


# -- status, ETA, attempts, worker --------------------------------------------------------------


def test_eta_while_running(client, sessions):
    job_id = queued_job(client, iris_job(epochs=60))
    assert client.get(f"/v1/jobs/{job_id}").get_json()["eta_seconds"] is None
    set_job(sessions, job_id, status=JobStatus.RUNNING, started_at=utcnow() - timedelta(seconds=10),
            epochs_done=5, attempts=1, worker="w1@host")
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["eta_seconds"] == pytest.approx(10 / 5 * 55, rel=0.05)  # 2 s an epoch, 55 to go
    assert job["attempts"] == 1 and job["worker"] == "w1@host" and job["progress"]["epoch"] == 5
    set_job(sessions, job_id, status=JobStatus.SUCCEEDED, finished_at=utcnow(), epochs_done=60)
    assert client.get(f"/v1/jobs/{job_id}").get_json()["eta_seconds"] is None


def test_eta_of_a_resumed_job_comes_from_its_recent_epochs(client, sessions):
    """Resumed at epoch 40 after an hour down: the time since the first start over the epochs
    done said 90 s an epoch. The latest epochs took 0.5 s each."""
    job_id = queued_job(client, iris_job(epochs=100))
    with sessions.begin() as s:
        for epoch in range(1, 41):
            s.add(EpochRecord(job_id=job_id, epoch=epoch, loss=1.0, metrics={}, duration=5.0 if epoch <= 20 else 0.5,
                              grad_norms={}, weight_norms={}))
    set_job(sessions, job_id, status=JobStatus.RUNNING, started_at=utcnow() - timedelta(hours=1), epochs_done=40)
    assert client.get(f"/v1/jobs/{job_id}").get_json()["eta_seconds"] == pytest.approx(0.5 * 60)
    listed = client.get("/v1/jobs").get_json()["jobs"]
    assert [j["eta_seconds"] for j in listed if j["id"] == job_id] == [pytest.approx(30.0)]


def test_a_listing_reads_every_running_jobs_eta_in_one_query(app, client, sessions):
    """Each running job's recent epochs used to be averaged in a query of its own."""
    from sqlalchemy import event

    ids = [queued_job(client, iris_job(epochs=50)) for _ in range(4)]
    with sessions.begin() as s:
        for i, job_id in enumerate(ids):
            for epoch in range(1, 11):
                s.add(EpochRecord(job_id=job_id, epoch=epoch, loss=1.0, metrics={}, duration=0.1 * (i + 1),
                                  grad_norms={}, weight_norms={}))
    for job_id in ids:
        set_job(sessions, job_id, status=JobStatus.RUNNING, started_at=utcnow(), epochs_done=10)
    statements = []
    engine = app.extensions["backprop"]["engine"]
    listener = lambda *args: statements.append(args[2])  # noqa: E731 (conn, cursor, statement, ...)
    event.listen(engine, "before_cursor_execute", listener)
    try:
        listed = client.get("/v1/jobs").get_json()["jobs"]
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    etas = {j["id"]: j["eta_seconds"] for j in listed}
    assert [etas[job_id] for job_id in ids] == [pytest.approx(0.1 * (i + 1) * 40) for i in range(4)]
    assert sum("avg(" in s.lower() for s in statements) == 1, statements


def test_a_trained_job_names_its_worker_and_attempts(client, sessions):
    job_id = queued_job(client, iris_job(epochs=2))
    run_job(sessions, job_id, worker="celery@box")
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["worker"] == "celery@box" and job["attempts"] == 1 and job["eta_seconds"] is None


# -- epochs: pages and downsampling -------------------------------------------------------------


@pytest.fixture
def sixty(client, sessions) -> str:
    return trained_job(client, sessions, iris_job(epochs=60))


def epochs(client, job_id, query="") -> dict:
    resp = client.get(f"/v1/jobs/{job_id}/epochs{query}")
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def test_epochs_in_pages(client, sixty):
    got, after, pages = [], 0, []
    while after is not None:
        page = epochs(client, sixty, f"?after={after}&limit=25")
        assert page["downsampled"] is False
        got += [e["epoch"] for e in page["epochs"]]
        pages.append((len(page["epochs"]), page["total"]))
        after = page["next_after"]
    assert got == list(range(1, 61))
    assert pages == [(25, 60), (25, 35), (10, 10)]
    assert epochs(client, sixty, "?after=60") == {"job_id": sixty, "epochs": [], "total": 0,
                                                  "downsampled": False, "next_after": None}
    assert epochs(client, sixty, "?limit=60")["next_after"] is None


def test_max_points_downsamples_keeping_first_and_last(client, sixty):
    page = epochs(client, sixty, "?max_points=7")
    numbers = [e["epoch"] for e in page["epochs"]]
    assert page["downsampled"] is True and page["next_after"] is None and page["total"] == 60
    assert len(numbers) == 7 and numbers[0] == 1 and numbers[-1] == 60 and numbers == sorted(set(numbers))
    full = {e["epoch"]: e for e in epochs(client, sixty)["epochs"]}
    assert all(e == full[e["epoch"]] for e in page["epochs"])  # real epochs, not averages
    short = epochs(client, sixty, "?max_points=100")
    assert short["downsampled"] is False and len(short["epochs"]) == 60
    tail = epochs(client, sixty, "?after=40&max_points=3")
    assert [e["epoch"] for e in tail["epochs"]] == [41, 51, 60] and tail["downsampled"] is True
    # max_points is the whole curve and replaces limit, whether or not it downsamples (with
    # limit=5 it gave 10 points at max_points=10, but a first page of 5 at max_points=300)
    for query, count in (("?limit=5&max_points=10", 10), ("?limit=5&max_points=300", 60)):
        page = epochs(client, sixty, query)
        assert len(page["epochs"]) == count and page["next_after"] is None, query


def test_max_points_reads_only_the_epochs_it_answers(app, client, sixty):
    """It read every epoch with its JSON columns, then kept max_points of them: 3-4 s for a
    100,000-epoch job. Only the epoch numbers are read whole now."""
    from sqlalchemy import event

    statements = []
    engine = app.extensions["backprop"]["engine"]
    listener = lambda *args: statements.append(args[2])  # noqa: E731 (conn, cursor, statement, ...)
    event.listen(engine, "before_cursor_execute", listener)
    try:
        page = epochs(client, sixty, "?max_points=7")
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert len(page["epochs"]) == 7
    full_rows = [s for s in statements if "epochs.grad_norms" in s]
    assert full_rows and all(" IN (" in s for s in full_rows), full_rows


def test_an_event_stream_catches_up_in_batches(client, sessions, monkeypatch):
    """A long history went out of one query holding every epoch (27 MB and 5 s for 100,000)."""
    monkeypatch.setattr(app.jobs, "SSE_BATCH", 2)
    job_id = trained_job(client, sessions, iris_job(epochs=5))
    text = client.get(f"/v1/jobs/{job_id}/events").get_data(as_text=True)
    assert [line for line in text.splitlines() if line.startswith("id:")] == [f"id: {n}" for n in range(1, 6)]
    assert text.count("event: status") == 1 and '"status":"succeeded"' in text.rstrip().splitlines()[-1]


@pytest.mark.parametrize("query, path", [
    ("?limit=0", "limit"), ("?after=-1", "after"), ("?max_points=1", "max_points"),
    ("?max_points=x", "max_points"), ("?page=2", "page"),
])
def test_bad_epoch_parameters_are_422(client, sixty, query, path):
    assert path in error_paths(problem(client.get(f"/v1/jobs/{sixty}/epochs{query}"), 422, "validation_error"))


# -- diagnostics --------------------------------------------------------------------------------


def deep(activation: str, depth: int, init: str, **training) -> dict:
    body = iris_job(epochs=3, **training)
    hidden = [{"type": "dense", "units": 16, "activation": activation, "kernel_initializer": init}
              for _ in range(depth)]
    body["model"]["layers"] = hidden + [{"type": "dense", "units": 3, "activation": "softmax"}]
    return body


def diagnostics(client, job_id) -> dict:
    resp = client.get(f"/v1/jobs/{job_id}/diagnostics")
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def test_diagnostics_per_layer_norms_per_epoch(client, sessions):
    job_id = trained_job(client, sessions, deep("relu", 2, "he_normal"))
    d = diagnostics(client, job_id)
    assert d["job_id"] == job_id and d["epochs"] == [1, 2, 3]
    assert [layer["layer"] for layer in d["layers"]] == ["dense_0", "dense_1", "dense_2"]
    for layer in d["layers"]:
        assert len(layer["grad_norms"]) == len(layer["weight_norms"]) == 3
        assert all(g > 0 for g in layer["grad_norms"]) and all(w > 0 for w in layer["weight_norms"])
    assert d["flags"] == []


def test_vanishing_gradients_are_flagged_in_plain_words(client, sessions):
    job_id = trained_job(client, sessions, deep("sigmoid", 10, "lecun_normal"))
    d = diagnostics(client, job_id)
    last = [layer["grad_norms"][-1] for layer in d["layers"]]
    assert last[0] < 1e-3 * max(last)  # the first layers barely get a gradient
    flags = [f for f in d["flags"] if f["kind"] == "vanishing_gradients"]
    assert flags and flags[0]["layer"] == "dense_0"
    assert "vanishing" in flags[0]["message"] and "dense_0" in flags[0]["message"]


def test_large_but_steady_gradients_are_told_apart_from_exploding_ones(client, sessions):
    """Targets in the millions make the gradients large from the first epoch: that is the scale
    of the loss, and "lower the learning rate or set clip_norm" (the old advice, given even with
    clip_norm set) would change nothing. It is said as such; a real explosion grows."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3))
    body = {"model": {"input_shape": [3], "layers": [{"type": "dense", "units": 8, "activation": "relu"},
                                                     {"type": "dense", "units": 1}], "loss": "mse"},
            "training": {"optimizer": {"type": "sgd", "learning_rate": 1e-9}, "epochs": 2, "clip_norm": 1.0},
            "dataset": {"features": x.round(4).tolist(), "targets": (x.sum(1) * 1e6).round(1).tolist()}}
    job_id = trained_job(client, sessions, body)
    assert client.get(f"/v1/jobs/{job_id}").get_json()["status"] == "succeeded"
    flags = diagnostics(client, job_id)["flags"]
    assert {f["kind"] for f in flags} == {"large_gradients"}
    assert "scale" in flags[0]["message"] and "have not exploded" in flags[0]["message"]


def test_gradients_that_grow_over_the_run_are_flagged_as_exploding(client, sessions):
    """Full-batch sgd on y = 2x with a learning rate past stability: every step overshoots by
    half again, so the gradient grows 1.5 times an epoch, still finite after 14 epochs. The
    flag names the epoch where it passed 100 times the first epoch's."""
    x = np.random.default_rng(0).normal(size=(64, 1))
    x = x / np.sqrt((x**2).mean())  # mean x^2 = 1: the loss's curvature is exactly 2
    body = {"model": {"input_shape": [1], "loss": "mse",
                      "layers": [{"type": "dense", "units": 1, "use_bias": False, "kernel_initializer": "zeros"}]},
            "training": {"optimizer": {"type": "sgd", "learning_rate": 1.25}, "epochs": 14, "batch_size": 64,
                         "shuffle": False},
            "dataset": {"features": x.tolist(), "targets": (2 * x[:, 0]).tolist()}}
    d = diagnostics(client, trained_job(client, sessions, body))
    norms = d["layers"][0]["grad_norms"]
    assert all(b > a for a, b in zip(norms, norms[1:], strict=False)) and norms[-1] > 100 * norms[0]
    first = next(e for e, g in zip(d["epochs"], norms, strict=True) if g >= 100 * norms[0])
    assert [f["kind"] for f in d["flags"]] == ["exploding_gradients"]
    assert f"in epoch {first}" in d["flags"][0]["message"]


def strict_json(resp) -> dict:
    """The body parsed as strict JSON: Infinity and NaN are not JSON, and many clients refuse them."""
    def refuse(name):
        raise AssertionError(f"{name} in {resp.request.path}")
    return json.loads(resp.get_data(as_text=True), parse_constant=refuse)


def test_overflowing_norms_are_null_never_infinity(client, sessions):
    """A float32 gradient norm can overflow while clip_norm keeps the weights finite; the
    answers must stay valid JSON, and the flag still says what happened."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)) * 1e3
    body = {"model": {"input_shape": [3], "layers": [{"type": "dense", "units": 1}], "loss": "mse"},
            "training": {"optimizer": {"type": "sgd", "learning_rate": 1e-9}, "epochs": 2, "clip_norm": 1.0},
            "dataset": {"features": x.round(4).tolist(), "targets": (x.sum(1) * 1e15).round(1).tolist()}}
    job_id = trained_job(client, sessions, body)
    assert strict_json(client.get(f"/v1/jobs/{job_id}"))["status"] == "succeeded"
    page = strict_json(client.get(f"/v1/jobs/{job_id}/epochs"))
    norm = page["epochs"][0]["grad_norms"]["dense_0"]
    assert norm is None or norm > 1e18  # None: it overflowed (as the engine's float32 norm does today)
    d = strict_json(client.get(f"/v1/jobs/{job_id}/diagnostics"))
    assert d["layers"][0]["grad_norms"][0] == norm
    assert [(f["kind"], f["layer"]) for f in d["flags"]] == [("exploding_gradients", "dense_0")]
    assert norm is not None or "beyond float range" in d["flags"][0]["message"]
    events = client.get(f"/v1/jobs/{job_id}/events").get_data(as_text=True)
    assert "Infinity" not in events and "NaN" not in events


def test_a_layer_with_no_gradient_at_all_is_flagged_and_a_frozen_one_is_not(client, sessions):
    """Every relu of dense_0 dead from the start: its gradient norms are all 0, the worst
    vanishing gradient there is (it used to be taken for a frozen layer and left out)."""
    x = -np.random.default_rng(0).uniform(1, 2, (32, 3))
    body = {"model": {"input_shape": [3], "loss": "mse", "layers": [
                {"type": "dense", "units": 8, "activation": "relu", "kernel_initializer": "ones"},
                {"type": "dense", "units": 1}]},
            "training": {"optimizer": {"type": "sgd", "learning_rate": 0.01}, "epochs": 3},
            "dataset": {"features": x.round(4).tolist(), "targets": x.sum(1).round(4).tolist()}}
    job_id = trained_job(client, sessions, body)
    d = diagnostics(client, job_id)
    assert d["layers"][0]["grad_norms"] == [0.0, 0.0, 0.0] and d["layers"][0]["frozen"] is False
    assert [(f["kind"], f["layer"]) for f in d["flags"]] == [("no_gradient", "dense_0")]
    assert "dead relus" in d["flags"][0]["message"] and "leaky_relu" in d["flags"][0]["message"]
    tuned = trained_job(client, sessions, {**body, "dataset": None, "dataset_id": client.get(
        f"/v1/jobs/{job_id}").get_json()["dataset_id"], "init_from": job_id, "freeze": ["dense_0"]})
    d = diagnostics(client, tuned)
    # frozen: no gradient computed, which is not a zero one, and nothing to flag
    assert d["layers"][0]["grad_norms"] == [None, None, None] and d["layers"][0]["frozen"] is True
    assert d["flags"] == []


def test_a_network_where_no_gradient_flows_at_all_is_flagged(client, sessions):
    """Every relu dead and no output bias: all three layers' norms are 0. With no largest layer
    to compare with, nothing was flagged, and the dashboard said all was well."""
    x = -np.random.default_rng(0).uniform(1, 2, (32, 3))
    body = {"model": {"input_shape": [3], "loss": "mse", "layers": [
                {"type": "dense", "units": 8, "activation": "relu", "kernel_initializer": "ones"},
                {"type": "dense", "units": 8, "activation": "relu"},
                {"type": "dense", "units": 1, "use_bias": False}]},
            "training": {"optimizer": {"type": "sgd", "learning_rate": 0.01}, "epochs": 2},
            "dataset": {"features": x.round(4).tolist(), "targets": x.sum(1).round(4).tolist()}}
    d = diagnostics(client, trained_job(client, sessions, body))
    assert all(layer["grad_norms"] == [0.0, 0.0] for layer in d["layers"])
    assert [(f["kind"], f["layer"]) for f in d["flags"]] == [("no_gradient", f"dense_{i}") for i in range(3)]
    assert "dead relus" in d["flags"][0]["message"] and "passes none back" in d["flags"][2]["message"]


def test_diagnostics_with_an_overflowed_norm_stored_as_null(client, sessions):
    job_id = queued_job(client)
    with sessions.begin() as s:
        s.add(EpochRecord(job_id=job_id, epoch=1, loss=1.0, metrics={"r2": None}, duration=0.1,
                          grad_norms={"dense_0": None, "dense_1": 0.5}, weight_norms={"dense_0": 2.0, "dense_1": None}))
    d = strict_json(client.get(f"/v1/jobs/{job_id}/diagnostics"))
    assert [(x["layer"], x["grad_norms"], x["weight_norms"]) for x in d["layers"]] == [
        ("dense_0", [None], [2.0]), ("dense_1", [0.5], [None])]
    assert [(f["kind"], f["layer"]) for f in d["flags"]] == [("exploding_gradients", "dense_0")]
    assert strict_json(client.get(f"/v1/jobs/{job_id}/epochs"))["epochs"][0]["r2"] is None


def test_gradient_flags_rules():
    from app.jobs import gradient_flags

    def kinds(*args, **kw):
        return [(f["kind"], f["layer"]) for f in gradient_flags(*args, **kw)]

    layers = ["a", "b", "c"]
    assert gradient_flags(layers, {"a": [1.0], "b": [0.5], "c": [2.0]}) == []
    assert kinds(layers, {"a": [1e-7], "b": [1e-2], "c": [1.0]}) == [("vanishing_gradients", "a")]
    # overflowed, or grown 100 times its first epoch's: exploded, at that epoch
    grown = gradient_flags(layers, {"a": [1.0, 150.0, 2.0], "b": [1.0, float("inf"), 1.0], "c": [1.0, 99.0, 1.0]},
                           epochs=[4, 5, 6])
    assert [(f["kind"], f["layer"]) for f in grown] == [("exploding_gradients", "a"), ("exploding_gradients", "b")]
    assert "epoch 5, 150 times" in grown[0]["message"] and "beyond float range" in grown[1]["message"]
    assert "set training.clip_norm" in grown[0]["message"]
    # blown up early, then every relu dead: both are said
    assert kinds(["a", "b"], {"a": [1.0, 500.0, 0.0], "b": [1.0, 2.0, 1.0]}) == [
        ("exploding_gradients", "a"), ("no_gradient", "a")]
    clipped = gradient_flags(["a"], {"a": [1.0, 500.0]}, clip_norm=1.0)
    assert "clip_norm (1) already clipped" in clipped[0]["message"]
    # large from the start: the loss's scale, said as such
    assert kinds(layers, {"a": [5e3, 6e3], "b": [4e3, 4e3], "c": [1e4, 9e3]}) == [
        ("large_gradients", "a"), ("large_gradients", "b"), ("large_gradients", "c")]
    assert gradient_flags([], {}) == []
    assert kinds(["a"], {"a": [0.0]}) == [("no_gradient", "a")]  # nothing learns at all
    dead = gradient_flags(["a", "b"], {"a": [0.0], "b": [1.0]}, activations={"a": "relu"})
    assert [f["kind"] for f in dead] == ["no_gradient"] and "dead relus" in dead[0]["message"]
    # a layer that starts out vanishing and grows to the others' size is recovering, not exploding
    assert kinds(["a", "b"], {"a": [2e-3, 0.05, 0.2], "b": [0.5, 0.4, 0.3]}) == []
    # zero gradients in a row: each names the neighbours that may be the cause, rather than
    # telling a layer whose relus work that they are dead
    chain = gradient_flags(layers, {"a": [1.0, 0.0], "b": [1.0, 0.0], "c": [1.0, 1.0]},
                           activations={"a": "relu", "b": "relu"})
    assert "may all output 0" in chain[0]["message"] and "layer b, after it, passes none back" in chain[0]["message"]
    assert "layer a, before it, has no gradient either" in chain[1]["message"]
    saturated = gradient_flags(["a", "b"], {"a": [0.0], "b": [1.0]}, activations={"a": "tanh"})
    assert "tanh units may be saturated" in saturated[0]["message"]
    dying = gradient_flags(["a", "b"], {"a": [1e-6], "b": [1.0]}, activations={"a": "relu"})
    assert "dying relus" in dying[0]["message"] and "Try relu-family" not in dying[0]["message"]
    # a norm that an l1/l2 penalty alone gives is no gradient from the data; a much smaller one
    # is the data's and the penalty's gradients cancelling out, as they do at a converged fit
    penalised = gradient_flags(["a", "b"], {"a": [1.0, 6.6e-3], "b": [1.0, 1.0]}, activations={"a": "relu"},
                               penalties={"a": 6.62e-3, "b": 1e-3})
    assert [(f["kind"], f["layer"]) for f in penalised] == [("no_gradient", "a")]
    assert "is what its l1/l2 penalty alone gives" in penalised[0]["message"]
    assert gradient_flags(["a", "b"], {"a": [1.0, 2.3e-3], "b": [1.0, 3e-3]}, penalties={"a": 0.08, "b": 0.06}) == []
    # a run that failed by diverging within an epoch: said, and its last norms not blamed on the data
    diverged = gradient_flags(["a"], {"a": [5e3]}, diverged="the loss became non-finite (NaN or inf) at epoch 2")
    assert [f["kind"] for f in diverged] == ["diverged"] and "at epoch 2" in diverged[0]["message"]


def test_diagnostics_of_a_deep_sigmoid_net_that_learns_flag_no_explosion(client, sessions):
    """Five sigmoid layers on digits with Adam learn (0.93 accuracy in 15 epochs); the first layer's gradient
    starts 100 times smaller than the others' and grows to their size as the net learns. That
    was flagged "gradients exploded ... lower the learning rate" (growth over its own start)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-9)
    layers = [{"type": "dense", "units": 32, "activation": "sigmoid"} for _ in range(5)]
    body = {"model": {"input_shape": [64], "loss": "categorical_crossentropy",
                      "layers": [*layers, {"type": "dense", "units": 10, "activation": "softmax"}]},
            "training": {"optimizer": {"type": "adam", "learning_rate": 0.003}, "epochs": 15, "batch_size": 32,
                         "seed": 0},
            "dataset": {"features": x.tolist(), "targets": y.tolist()}}
    job_id = trained_job(client, sessions, body)
    assert client.get(f"/v1/jobs/{job_id}").get_json()["metrics"]["accuracy"] > 0.9
    d = diagnostics(client, job_id)
    first = next(layer["grad_norms"] for layer in d["layers"] if layer["layer"] == "dense_0")
    assert max(first) > 100 * first[0]  # the case: grown a hundredfold over its own start
    assert [f for f in d["flags"] if f["kind"] == "exploding_gradients"] == []


def test_diagnostics_of_a_job_that_diverged_within_an_epoch_say_so(client, sessions):
    """Standardized diabetes data and plain SGD at 0.3: the loss overflows in epoch 2, after a
    first epoch whose mean norms already hold the blow-up. The flags said the gradients were
    "large" from the data's scale (it is unit-scaled), or nothing at all at 0.2."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x, y = (x - x.mean(axis=0)) / x.std(axis=0), (y - y.mean()) / y.std()
    for lr in (0.3, 0.2, 50.0):  # at 50 the first epoch diverges: no epoch is recorded
        body = {"model": {"input_shape": [10], "loss": "mse",
                          "layers": [{"type": "dense", "units": 32}, {"type": "dense", "units": 1}]},
                "training": {"optimizer": {"type": "sgd", "learning_rate": lr}, "epochs": 50, "batch_size": 148,
                             "seed": 0},
                "dataset": {"features": x.tolist(), "targets": y.tolist()}}
        job_id = trained_job(client, sessions, body)
        job = client.get(f"/v1/jobs/{job_id}").get_json()
        assert job["status"] == "failed" and "became non-finite" in job["error"], job
        kinds = [f["kind"] for f in diagnostics(client, job_id)["flags"]]
        assert kinds[0] == "diverged" and "large_gradients" not in kinds, (lr, kinds)


def test_dead_relus_under_an_l2_penalty_are_flagged(client, sessions):
    """Wine at a learning rate of 2: the third relu layer dies (no unit positive on any sample)
    and the net answers the largest class. With l2 on its kernel, its gradient was the penalty's
    2 l2 |W|, neither 0 nor vanishing: no flag at all."""
    from sklearn.datasets import load_wine

    x, y = load_wine(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    layers = [{"type": "dense", "units": 16, "activation": "relu", "l2": 1e-4} for _ in range(3)]
    body = {"model": {"input_shape": [13], "loss": "categorical_crossentropy",
                      "layers": [*layers, {"type": "dense", "units": 3, "activation": "softmax", "l2": 1e-4}]},
            "training": {"optimizer": {"type": "sgd", "learning_rate": 2.0}, "epochs": 30, "batch_size": 16,
                         "seed": 1},
            "dataset": {"features": x.tolist(), "targets": [str(t) for t in y]}}
    job_id = trained_job(client, sessions, body)
    weights = {w["name"]: np.asarray(w["values"], dtype=np.float32)
               for w in client.get(f"/v1/jobs/{job_id}/weights").get_json()["weights"]}
    h = x.astype(np.float32)
    for i in range(3):
        h = np.maximum(h @ weights[f"dense_{i}/kernel"] + weights[f"dense_{i}/bias"], 0)
    assert not (h > 0).any()  # the case: dense_2's units are all dead
    flags = {f["layer"]: f for f in diagnostics(client, job_id)["flags"] if f["kind"] == "no_gradient"}
    assert "dense_2" in flags and "penalty alone gives" in flags["dense_2"]["message"], flags

    # and a net that fits well under l2, whose data and penalty gradients cancel out: no flag
    body = iris_job(epochs=400, batch_size=150, optimizer={"type": "sgd", "learning_rate": 0.5})
    body["model"]["layers"] = [{"type": "dense", "units": 16, "activation": "tanh", "l2": 0.01},
                               {"type": "dense", "units": 3, "activation": "softmax", "l2": 0.01}]
    job_id = trained_job(client, sessions, body)
    assert client.get(f"/v1/jobs/{job_id}").get_json()["metrics"]["accuracy"] > 0.9
    assert diagnostics(client, job_id)["flags"] == []


def test_diagnostics_of_a_job_without_epochs(client):
    job_id = queued_job(client)
    d = diagnostics(client, job_id)
    assert d["epochs"] == [] and d["flags"] == []
    assert all(layer["grad_norms"] == [] for layer in d["layers"])
    problem(client.get("/v1/jobs/nope/diagnostics"), 404, "job_not_found")


# -- events (in process; tests/e2e/test_sse.py reads a real job's stream from gunicorn) ---------


def test_events_of_a_quiet_job_send_keep_alives(client, monkeypatch):
    from app import jobs

    monkeypatch.setattr(jobs, "SSE_POLL_SECONDS", 0.01)
    monkeypatch.setattr(jobs, "SSE_KEEPALIVE_SECONDS", 0.05)
    job_id = queued_job(client)
    resp = client.get(f"/v1/jobs/{job_id}/events", buffered=False)
    assert resp.status_code == 200 and resp.mimetype == "text/event-stream"
    chunks = iter(resp.response)
    seen = ""
    while ": keep-alive" not in seen:
        seen += next(chunks).decode()
    resp.close()  # the client went away: the stream stops
    assert seen.startswith("retry: 2000\n\n") and "event: status" in seen and '"status":"queued"' in seen


def test_events_resume_after_last_event_id(client, sessions):
    job_id = trained_job(client, sessions, iris_job(epochs=5))
    text = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "3"}).get_data(as_text=True)
    assert [line for line in text.splitlines() if line.startswith("id:")] == ["id: 4", "id: 5"]
    text = client.get(f"/v1/jobs/{job_id}/events?after=4", headers={"Last-Event-ID": "1"}).get_data(as_text=True)
    assert [line for line in text.splitlines() if line.startswith("id:")] == ["id: 5"]  # the query wins
    assert '"status":"succeeded"' in text.rstrip().splitlines()[-1]  # it ends with the terminal status
    assert "after" in error_paths(problem(client.get(f"/v1/jobs/{job_id}/events?after=-1"), 422,
                                          "validation_error"))
    problem(client.get("/v1/jobs/nope/events"), 404, "job_not_found")


# -- fine-tuning --------------------------------------------------------------------------------


def first_loss(client, job_id) -> float:
    return epochs(client, job_id, "?limit=1")["epochs"][0]["loss"]


def test_fine_tuning_starts_from_the_parents_weights(client, sessions):
    parent = trained_job(client, sessions, iris_job(epochs=80))
    parent_final = epochs(client, parent, "?after=79")["epochs"][0]["loss"]
    fresh = trained_job(client, sessions, iris_job(epochs=3, seed=1))
    body = iris_job(epochs=3, seed=1)
    body["init_from"] = parent
    child = queued_job(client, body)
    assert client.get(f"/v1/jobs/{child}").get_json()["init_from"] == parent
    run_job(sessions, child)
    child_first, fresh_first = first_loss(client, child), first_loss(client, fresh)
    assert child_first < 1.5 * parent_final  # where the parent left off ...
    assert child_first < 0.5 * fresh_first  # ... not where a new network starts
    assert parent_final < 0.3 < fresh_first


def test_freeze_keeps_a_layers_weights_bit_identical(client, sessions):
    parent = trained_job(client, sessions, iris_job(epochs=5))
    body = iris_job(epochs=5)
    body["init_from"], body["freeze"] = parent, ["dense_0"]
    child = trained_job(client, sessions, body)
    assert client.get(f"/v1/jobs/{child}").get_json()["freeze"] == ["dense_0"]

    def weights(job_id):
        return {w["name"]: w["values"] for w in client.get(f"/v1/jobs/{job_id}/weights").get_json()["weights"]}

    before, after = weights(parent), weights(child)
    assert after["dense_0/kernel"] == before["dense_0/kernel"] and after["dense_0/bias"] == before["dense_0/bias"]
    assert after["dense_1/kernel"] != before["dense_1/kernel"]
    frozen = [layer for layer in diagnostics(client, child)["layers"] if layer["layer"] == "dense_0"]
    assert frozen[0]["grad_norms"] == [None] * 5 and frozen[0]["frozen"]  # no gradient computed


def test_a_different_architecture_is_refused_naming_the_mismatch(client, sessions):
    parent = trained_job(client, sessions, iris_job(epochs=2))
    body = iris_job(epochs=2)
    body["model"]["layers"][0]["units"] = 32
    body["init_from"] = parent
    err = problem(submit(client, body), 422, "validation_error")
    messages = " | ".join(e["message"] for e in err["errors"])
    assert set(error_paths(err)) == {"model"}
    assert "dense_0/kernel" in messages and "[4, 16]" in messages and "[4, 32]" in messages
    assert "dense_1/kernel" in messages
    body["model"]["layers"].insert(1, {"type": "dense", "units": 32, "activation": "relu"})
    messages = " | ".join(e["message"] for e in problem(submit(client, body), 422, "validation_error")["errors"])
    assert "dense_2" in messages and "new in this spec" in messages


def test_fine_tuning_rules(client, sessions):
    body = iris_job(epochs=2)
    body["freeze"] = ["dense_0"]
    assert error_paths(problem(submit(client, body), 422, "validation_error")) == ["freeze"]
    parent = trained_job(client, sessions, iris_job(epochs=2))
    body["init_from"], body["freeze"] = parent, ["dense_0", "dense_9"]
    err = problem(submit(client, body), 422, "validation_error")
    assert error_paths(err) == ["freeze[1]"] and "dense_9" in err["detail"]
    body["init_from"], body["freeze"] = "nope", None
    assert error_paths(problem(submit(client, body), 404, "job_not_found")) == ["init_from"]
    body["init_from"] = queued_job(client)
    problem(submit(client, body), 409, "job_not_finished")
    with sessions() as s:  # none of the refused requests left a job behind
        assert s.scalar(select(func.count()).select_from(Job)) == 2


# -- Idempotency-Key ----------------------------------------------------------------------------


def count_jobs(sessions) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(Job))


def test_same_key_same_body_answers_with_the_first_result(client, sessions, migrated):
    body = iris_job(epochs=2)
    first = submit(client, body, **{"Idempotency-Key": "k-1"})
    again = submit(client, body, **{"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert again.headers["Location"] == first.headers["Location"]
    assert count_jobs(sessions) == 1
    other = submit(client, body, **{"Idempotency-Key": "k-2"})
    assert other.get_json()["id"] != first.get_json()["id"] and count_jobs(sessions) == 2


def test_same_key_different_body_is_refused(client, sessions):
    submit(client, iris_job(epochs=2), **{"Idempotency-Key": "k"})
    problem(submit(client, iris_job(epochs=3), **{"Idempotency-Key": "k"}), 422, "idempotency_key_reused")
    assert count_jobs(sessions) == 1
    job_id = client.get("/v1/jobs").get_json()["jobs"][0]["id"]
    # and the same key on another endpoint is another request
    problem(client.post(f"/v1/jobs/{job_id}/retry", headers={"Idempotency-Key": "k"}), 422,
            "idempotency_key_reused")


def test_a_refused_request_does_not_use_up_its_key(client, sessions):
    bad = iris_job(epochs=2)
    bad["model"]["layers"][0]["units"] = 0
    problem(submit(client, bad, **{"Idempotency-Key": "k"}), 422, "validation_error")
    assert submit(client, iris_job(epochs=2), **{"Idempotency-Key": "k"}).status_code == 202


def test_idempotent_retry(client, sessions):
    job_id = queued_job(client)
    client.post(f"/v1/jobs/{job_id}/cancel")
    first = client.post(f"/v1/jobs/{job_id}/retry", headers={"Idempotency-Key": "r"})
    again = client.post(f"/v1/jobs/{job_id}/retry", headers={"Idempotency-Key": "r"})
    assert first.status_code == again.status_code == 202
    assert first.get_json()["id"] == again.get_json()["id"] and count_jobs(sessions) == 2


def test_concurrent_requests_with_one_key_create_one_job(app, sessions):
    body = json.dumps(iris_job(epochs=2))
    barrier = threading.Barrier(4)
    results: list = []

    def post():
        c = app.test_client()
        barrier.wait()
        r = c.post("/v1/jobs", data=body, content_type="application/json", headers={"Idempotency-Key": "race"})
        results.append((r.status_code, r.get_json()))

    threads = [threading.Thread(target=post) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert count_jobs(sessions) == 1, results
    ids = {b["id"] for status, b in results if status == 202}
    assert len(ids) == 1
    # the others either got the same answer or were told to come back
    assert all(status == 202 or (status == 409 and b["code"] == "idempotency_key_in_use") for status, b in results)
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(IdempotencyRecord)) == 1


def test_a_key_whose_first_request_is_still_running(app, client, sessions):
    from app.idempotency import PENDING, request_digest
    from core.db import DEFAULT_TENANT

    raw = json.dumps(iris_job(epochs=2))
    with app.test_request_context("/v1/jobs", method="POST", data=raw, content_type="application/json"):
        digest = request_digest()
    with sessions.begin() as s:
        s.add(IdempotencyRecord(tenant=DEFAULT_TENANT, key="slow", request_hash=digest, status_code=PENDING,
                                response={}, created_at=utcnow()))
    post = lambda: client.post("/v1/jobs", data=raw, content_type="application/json",  # noqa: E731
                               headers={"Idempotency-Key": "slow"})
    resp = post()
    problem(resp, 409, "idempotency_key_in_use")
    assert int(resp.headers["Retry-After"]) >= 1 and count_jobs(sessions) == 0
    with sessions.begin() as s:  # a claim left by a process that died is taken over after a while
        s.execute(update(IdempotencyRecord).values(created_at=utcnow() - timedelta(minutes=10)))
    first = post()
    assert first.status_code == 202 and count_jobs(sessions) == 1
    assert post().get_json()["id"] == first.get_json()["id"] and count_jobs(sessions) == 1


def test_a_key_expires_after_idempotency_hours(app, client, sessions):
    """A day later the key is free again: the same body makes a new job, another body is no
    longer 'reused'; and the purge deletes only keys past their time."""
    from core.idempotency import purge_expired_keys

    first = submit(client, iris_job(epochs=2), **{"Idempotency-Key": "daily"})
    assert submit(client, iris_job(epochs=2), **{"Idempotency-Key": "daily"}).get_json()["id"] == first.get_json()["id"]
    problem(submit(client, iris_job(epochs=3), **{"Idempotency-Key": "daily"}), 422, "idempotency_key_reused")
    hours = app.extensions["backprop"]["settings"].idempotency_hours
    with sessions.begin() as s:
        s.execute(update(IdempotencyRecord).values(created_at=utcnow() - timedelta(hours=hours, minutes=1)))
    again = submit(client, iris_job(epochs=3), **{"Idempotency-Key": "daily"})
    assert again.status_code == 202 and again.get_json()["id"] != first.get_json()["id"]
    assert count_jobs(sessions) == 2
    assert submit(client, iris_job(epochs=3), **{"Idempotency-Key": "daily"}).get_json()["id"] == again.get_json()["id"]

    submit(client, iris_job(epochs=2), **{"Idempotency-Key": "old"})
    with sessions.begin() as s:
        s.execute(update(IdempotencyRecord).where(IdempotencyRecord.key == "old")
                  .values(created_at=utcnow() - timedelta(hours=hours + 1)))
    assert purge_expired_keys(sessions, app.extensions["backprop"]["settings"]) == 1
    with sessions() as s:
        assert set(s.scalars(select(IdempotencyRecord.key))) == {"daily"}


def test_overlong_idempotency_key(client):
    problem(submit(client, iris_job(epochs=2), **{"Idempotency-Key": "k" * 256}), 422, "validation_error")


# -- request ids --------------------------------------------------------------------------------


def test_request_id_is_echoed_or_made_on_every_response(client, caplog):
    for resp in (client.get("/v1/jobs", headers={"X-Request-ID": "abc-123"}),
                 client.get("/v1/jobs/nope", headers={"X-Request-ID": "abc-123"}),
                 client.delete("/v1/jobs", headers={"X-Request-ID": "abc-123"})):
        assert resp.headers["X-Request-ID"] == "abc-123"
    made = {client.get(path).headers["X-Request-ID"] for path in ("/v1/jobs", "/livez", "/v1/jobs/nope")}
    assert len(made) == 3 and all(len(r) >= 16 for r in made)
    assert client.get("/livez", headers={"X-Request-ID": "x" * 500}).headers["X-Request-ID"] != "x" * 500
    # gunicorn writes the id into its JSON access line unescaped: a backslash or quote broke it
    for hostile in ("zz\\", 'a"b', "yy\\u0041", "a b"):
        assert client.get("/livez", headers={"X-Request-ID": hostile}).headers["X-Request-ID"] != hostile
    assert client.get("/livez", headers={"X-Request-ID": "req:1.2_3-x"}).headers["X-Request-ID"] == "req:1.2_3-x"


def test_request_id_is_in_the_log_lines_of_the_request(client, caplog):
    from core.logs import JsonFormatter

    with caplog.at_level(logging.INFO):
        resp = submit(client, iris_job(epochs=2), **{"X-Request-ID": "trace-me-42"})
    assert resp.status_code == 202
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    assert any(line["request_id"] == "trace-me-42" and resp.get_json()["id"] in line["message"] for line in lines)


# -- errors, health, documentation --------------------------------------------------------------


def test_every_error_is_problem_json(migrated):
    from app import create_app

    app = create_app(dataclasses.replace(migrated, max_request_bytes=1000))

    @app.get("/v1/boom")
    def boom():
        raise RuntimeError("kaput")

    c = app.test_client()
    problem(c.get("/v1/boom"), 500, "internal_error")
    problem(c.get("/v1/nothing"), 404, "not_found")
    problem(c.put("/v1/jobs"), 405, "method_not_allowed")
    problem(c.post("/v1/jobs", data="x" * 5000, content_type="application/json"), 413, "request_too_large")
    problem(c.post("/v1/jobs", data="x", content_type="text/plain"), 415, "unsupported_media_type")
    problem(c.post("/v1/jobs", data="{", content_type="application/json"), 400, "invalid_json")
    err = problem(c.post("/v1/jobs", json={"model": {}}), 422, "validation_error")
    assert all(set(e) == {"path", "message"} for e in err["errors"])
    assert "kaput" not in c.get("/v1/boom").get_data(as_text=True)  # internals stay in the log
    app.extensions["backprop"]["engine"].dispose()


def test_readyz_is_503_until_the_broker_answers(migrated):
    from app import create_app

    app = create_app(dataclasses.replace(migrated, broker_url="redis://127.0.0.1:1/0", auth="off"))
    c = app.test_client()
    assert c.get("/livez").status_code == 200
    started = time.monotonic()
    body = problem(c.get("/readyz"), 503, "not_ready")
    assert time.monotonic() - started < 15
    assert body["checks"]["database"] == "ok" and body["checks"]["broker"].startswith("error")
    app.extensions["backprop"]["engine"].dispose()


def test_docs_page(client):
    resp = client.get("/docs")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    assert "/openapi.json" in resp.get_data(as_text=True)


def documented_operations(app) -> set[tuple[str, str]]:
    ops = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/v1/") or rule.rule in ("/livez", "/readyz"):
            path = rule.rule.replace("<", "{").replace(">", "}")
            ops |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    return ops


@pytest.mark.parametrize("auth", ["off", "on"])
def test_openapi_documents_every_operation_parameter_and_error(migrated, auth):
    from openapi_spec_validator import validate

    from app import create_app
    from app.openapi import Problem

    app = create_app(dataclasses.replace(migrated, auth=auth))
    doc = app.test_client().get("/openapi.json").get_json()
    validate(doc)  # a valid OpenAPI 3.1 document
    assert doc["openapi"].startswith("3.1")
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert documented_operations(app) <= documented
    assert set(doc["components"]["schemas"]["Problem"]["properties"]) == set(Problem.model_fields)
    for (path, method) in documented_operations(app):
        op = doc["paths"][path][method]
        params = {(p["in"], p["name"]) for p in op["parameters"]}
        for name in path.split("{")[1:]:
            assert ("path", name.split("}")[0]) in params, (path, method)
        assert ("header", "X-Request-ID") in params
        errors = {code: r for code, r in op["responses"].items() if int(code) >= 400}
        assert "500" in errors, (path, method)
        for r in errors.values():
            assert r["content"] == {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
        if path.startswith("/v1/"):
            assert "429" in errors
            assert "Retry-After" in errors["503"]["headers"]  # database_unavailable, too_many_*
            assert ("401" in errors) == (auth == "on"), (path, method)
        if "requestBody" in op:
            assert {"400", "413", "415", "422"} <= set(errors), (path, method)
        if any(p["in"] == "query" for p in op["parameters"]):
            assert "422" in errors, (path, method)
        if (path, method) in {("/v1/jobs", "post"), ("/v1/jobs/{job_id}/retry", "post"),
                              ("/v1/datasets", "post"), ("/v1/models", "post")}:
            assert ("header", "Idempotency-Key") in params and "422" in errors, (path, method)
        if auth == "on" and not path.startswith("/v1/"):
            assert op["security"] == []
    jobs = doc["paths"]["/v1/jobs"]["get"]
    assert {p["name"] for p in jobs["parameters"] if p["in"] == "query"} == {
        "status", "dataset_id", "created_after", "created_before", "limit", "next"}
    events = doc["paths"]["/v1/jobs/{job_id}/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert {p["name"] for p in events["parameters"]} >= {"after", "Last-Event-ID"}
    app.extensions["backprop"]["engine"].dispose()


def test_openapi_request_schemas_are_the_validating_models(client):
    from app.schemas import JobCreate

    doc = client.get("/openapi.json").get_json()
    schema = doc["components"]["schemas"]["JobCreate"]
    assert set(schema["properties"]) == set(JobCreate.model_fields)
    assert schema["additionalProperties"] is False  # the model forbids unknown fields, and says so
    body = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/JobCreate"}
    example = schema["examples"][0]
    assert submit(client, example).status_code == 202  # the documented example is accepted


def test_a_job_cancelled_after_epochs_predicts_with_the_weights_it_kept(client, sessions):
    """Cancelled once it was good enough: its weights could be downloaded and fine-tuned from, but
    predict answered 409 `job_not_finished` (for a job that had finished)."""
    job_id = trained_job(client, sessions, iris_job(epochs=5))
    set_job(sessions, job_id, status=JobStatus.CANCELLED, stop_reason="cancelled")
    x, _ = iris()
    resp = client.post(f"/v1/jobs/{job_id}/predict", json={"inputs": x[:3].tolist()})
    assert resp.status_code == 200, resp.get_json()
    assert len(resp.get_json()["predictions"]) == 3
    # the registry keeps to succeeded jobs, and says why with a code of its own
    body = problem(client.post("/v1/models", json={"name": "m", "job_id": job_id}), 409, "job_not_succeeded")
    assert body["job_status"] == "cancelled"
    # a job that ended with no weights, and one still training
    failed = queued_job(client)
    set_job(sessions, failed, status=JobStatus.FAILED, error="boom")
    problem(client.post(f"/v1/jobs/{failed}/predict", json={"inputs": x[:1].tolist()}), 409, "no_weights")
    running = queued_job(client)
    set_job(sessions, running, status=JobStatus.RUNNING, started_at=utcnow())
    problem(client.post(f"/v1/jobs/{running}/predict", json={"inputs": x[:1].tolist()}), 409, "job_not_finished")
