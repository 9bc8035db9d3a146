"""Requests racing each other on PostgreSQL, where a transaction reads what others committed a
moment ago (SQLite's IMMEDIATE transactions take turns instead). Each test holds the other side
open at the point where it used to break, then lets it commit."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import delete, select, text

import app.predict as predict_module
from core.db import Dataset, EpochRecord, Job, JobStatus, WeightArray
from tests.data import iris, iris_job
from worker.training import run_job


def delete_rows(session, job_id: str) -> None:
    """What DELETE /v1/jobs/{id} removes: the job, its history, weights and inline dataset."""
    dataset_id = session.scalar(select(Job.dataset_id).where(Job.id == job_id))
    session.execute(delete(EpochRecord).where(EpochRecord.job_id == job_id))
    session.execute(delete(WeightArray).where(WeightArray.job_id == job_id))
    session.execute(delete(Job).where(Job.id == job_id))
    session.execute(delete(Dataset).where(Dataset.id == dataset_id))


def wait_for_a_lock_waiter(app, timeout: float = 30) -> None:
    """Until a request of the test waits on a row lock: the race is then set up, whatever the
    host's speed (a fixed pause could end before the request got there)."""
    query = text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                 "AND wait_event_type = 'Lock'")
    deadline = time.monotonic() + timeout
    with app.extensions["backprop"]["engine"].connect() as conn:
        while True:
            waiting = conn.scalar(query)
            conn.rollback()  # a transaction sees one snapshot of pg_stat_activity: look anew each time
            if waiting:
                return
            assert time.monotonic() < deadline, "the request never reached the locked row"
            time.sleep(0.01)


def while_deleted_uncommitted(app, job_id: str, request):
    """Runs `request` while another transaction has deleted the job under a row lock and not yet
    committed, then commits; the request's answer."""
    answer = []
    with app.extensions["backprop"]["sessions"].begin() as session:
        session.execute(select(Job.id).where(Job.id == job_id).with_for_update())
        delete_rows(session, job_id)
        thread = threading.Thread(target=lambda: answer.append(request(app.test_client())))
        thread.start()
        wait_for_a_lock_waiter(app)
    thread.join(30)
    assert answer, "the request did not answer"
    return answer[0]


@pytest.mark.parametrize("action", ["delete", "cancel", "retry"])
def test_a_request_racing_a_delete_of_its_job_is_a_404(pg_app, action):
    """It read the job without a lock and then locked it: once the delete committed, the lock
    found no row and the request answered 500 (a retry: a foreign-key violation, as its new job
    pointed at the deleted dataset)."""
    c = pg_app.test_client()
    job_id = c.post("/v1/jobs", json=iris_job(epochs=200)).get_json()["id"]
    assert c.post(f"/v1/jobs/{job_id}/cancel").status_code == 202  # cancelled while queued: retryable
    call = {"delete": lambda client: client.delete(f"/v1/jobs/{job_id}"),
            "cancel": lambda client: client.post(f"/v1/jobs/{job_id}/cancel"),
            "retry": lambda client: client.post(f"/v1/jobs/{job_id}/retry")}[action]
    resp = while_deleted_uncommitted(pg_app, job_id, call)
    assert resp.status_code == 404 and resp.get_json()["code"] == "job_not_found", resp.get_json()


def test_a_cancel_racing_a_worker_that_finishes_the_job_never_overwrites_it(pg_app):
    """The worker commits `succeeded` under the row lock while the cancel waits for it: the
    cancel then reads the finished job and answers 409, and the job stays succeeded."""
    c = pg_app.test_client()
    job_id = c.post("/v1/jobs", json=iris_job(epochs=200)).get_json()["id"]
    answer = []
    with pg_app.extensions["backprop"]["sessions"].begin() as session:
        job = session.get(Job, job_id, with_for_update=True)
        job.status, job.stop_reason, job.attempts = JobStatus.SUCCEEDED, "completed", 1
        thread = threading.Thread(target=lambda: answer.append(pg_app.test_client().post(f"/v1/jobs/{job_id}/cancel")))
        thread.start()
        wait_for_a_lock_waiter(pg_app)
    thread.join(30)
    assert answer[0].status_code == 409 and answer[0].get_json()["code"] == "job_finished"
    assert c.get(f"/v1/jobs/{job_id}").get_json()["status"] == "succeeded"


def test_a_delete_waits_for_a_retry_that_reuses_the_dataset(pg_app, monkeypatch):
    """The retry's new job uses the old job's inline dataset. The retry is held just after it read
    the old job; a delete of that job meanwhile must wait for it, then see the new job and keep
    the dataset. Without the retry's shared lock the delete took the dataset too, and the retry's
    insert failed its foreign key (500)."""
    import app.jobs as jobs_module

    c = pg_app.test_client()
    job_id = c.post("/v1/jobs", json=iris_job(epochs=200)).get_json()["id"]
    c.post(f"/v1/jobs/{job_id}/cancel")
    release, reached = threading.Event(), threading.Event()
    check = jobs_module.check_active_jobs

    def held(session, tenant):  # called by the retry after it read (and locked) the old job
        reached.set()
        release.wait(30)
        check(session, tenant)

    monkeypatch.setattr(jobs_module, "check_active_jobs", held)
    answers: dict = {}
    retry = threading.Thread(target=lambda: answers.update(retry=pg_app.test_client().post(f"/v1/jobs/{job_id}/retry")))
    retry.start()
    assert reached.wait(30)
    delete = threading.Thread(target=lambda: answers.update(delete=pg_app.test_client().delete(f"/v1/jobs/{job_id}")))
    delete.start()
    wait_for_a_lock_waiter(pg_app)  # the delete waits on the old job's row
    release.set()
    retry.join(30)
    delete.join(30)
    assert answers["retry"].status_code == 202, answers["retry"].get_json()
    assert answers["delete"].status_code == 204, answers["delete"].get_json()
    new = answers["retry"].get_json()
    assert c.get(f"/v1/jobs/{new['id']}").get_json()["status"] == "queued"
    with pg_app.extensions["backprop"]["sessions"]() as session:
        assert session.get(Dataset, new["dataset_id"]) is not None


def test_predict_racing_a_delete_never_answers_without_the_labels(pg_app, monkeypatch):
    """Weights read before the delete committed and labels after it: the model was built with
    no labels, answered class indices (0 for "setosa") and stayed cached so."""
    x, y = iris()
    names = ["setosa", "versicolor", "virginica"]
    body = iris_job(epochs=5)
    body["dataset"]["targets"] = [names[int(v)] for v in y]
    c = pg_app.test_client()
    job_id = c.post("/v1/jobs", json=body).get_json()["id"]
    sessions = pg_app.extensions["backprop"]["sessions"]
    run_job(sessions, job_id)
    real = predict_module.load_weights

    def deleted_right_after(session, job):  # the delete commits between the two reads
        weights = real(session, job)
        with sessions.begin() as other:
            delete_rows(other, job)
        return weights

    monkeypatch.setattr(predict_module, "load_weights", deleted_right_after)
    resp = c.post(f"/v1/jobs/{job_id}/predict", json={"inputs": x[:2].tolist()})
    assert resp.status_code == 404 or set(resp.get_json()["predictions"]) <= set(names), resp.get_json()
    assert c.post(f"/v1/jobs/{job_id}/predict", json={"inputs": x[:2].tolist()}).status_code == 404


def test_concurrent_submits_stay_within_the_active_jobs_limit(pg_app):
    """Each submit counted the active jobs before any had added its own: 30 at once let 9
    through a limit of 5."""
    barrier = threading.Barrier(8)
    codes = []

    def submit():
        client = pg_app.test_client()
        barrier.wait()
        codes.append(client.post("/v1/jobs", json=iris_job(epochs=1)).status_code)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(codes) == [202] * 3 + [429] * 5, codes


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_job_pages_walk_every_job_once_with_tied_timestamps(backend, request, client):
    """The cursor is a row-value comparison (created_at, id) < (at, id) now, which the listing
    index serves as one range; jobs created in the same instant must still come once each."""
    app = request.getfixturevalue("pg_app") if backend == "postgres" else client.application
    sessions = app.extensions["backprop"]["sessions"]
    with sessions.begin() as session:
        ds = Dataset(tenant="default", n_samples=1, feature_shape=[1], feature_dtype="float64", features=b"\0" * 8,
                     target_shape=[], target_dtype="float64", targets=b"\0" * 8, checksum="x")
        session.add(ds)
        session.flush()
        at = [datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)]
        session.add_all(Job(tenant="default", dataset_id=ds.id, model_spec={}, training_spec={}, total_epochs=1,
                            created_at=at[i % 2]) for i in range(25))
    test_client = app.test_client()
    seen, cursor = [], None
    while True:
        body = test_client.get("/v1/jobs?limit=4" + (f"&next={cursor}" if cursor else "")).get_json()
        seen += [(j["created_at"], j["id"]) for j in body["jobs"]]
        cursor = body["next"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 25
    assert seen == sorted(seen, reverse=True)  # newest first, ties by id


def test_a_deep_job_page_is_one_index_range_on_postgres(pg_app):
    """The OR form of the cursor was a filter over every job before the cursor: 84 ms for a page
    98,000 jobs deep against 19 ms for the first. The row-value form is an index condition."""
    from sqlalchemy.dialects import postgresql

    from app.pagination import newest_first

    stmt = newest_first(select(Job).where(Job.tenant == "default"), Job, 50,
                        "MjAyNi0wMS0wMVQwMDowMDowMCswMDowMHxhYmM")  # "2026-01-01T00:00:00+00:00|abc"
    sql = str(stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    with pg_app.extensions["backprop"]["engine"].connect() as conn:
        conn.execute(text("SET enable_seqscan = off"))  # the plan the index allows, whatever the table's size
        plan = "\n".join(row[0] for row in conn.execute(text("EXPLAIN " + sql)))
    assert "ix_jobs_tenant_created_at_id" in plan, plan
    index_cond = "\n".join(line for line in plan.splitlines() if "Index Cond" in line)
    assert "created_at" in index_cond and "Filter" not in plan, plan
