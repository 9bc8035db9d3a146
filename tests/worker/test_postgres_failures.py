"""The job runner when PostgreSQL itself fails under it: errors raised by the server (a full
disk, a shutdown), injected with triggers on a test database of its own."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import select, text

from core.db import EpochRecord
from tests.data import iris_job
from worker import training
from worker.training import run_job


@pytest.fixture
def pg(pg_app):
    settings = pg_app.extensions["backprop"]["settings"]
    fast = dataclasses.replace(settings, heartbeat_seconds=0.02, stale_after_seconds=5)
    return pg_app.test_client(), pg_app.extensions["backprop"]["sessions"], fast


def fail_once(sessions, table: str, errcode: str, message: str) -> None:
    """The next INSERT into `table` raises `errcode`; the ones after it pass (a sequence: its
    nextval survives the failed transaction's rollback)."""
    with sessions.begin() as s:
        s.execute(text("CREATE SEQUENCE fail_once"))
        s.execute(text(f"""CREATE FUNCTION fail_once() RETURNS trigger AS $$ BEGIN
            IF nextval('fail_once') = 1 THEN RAISE EXCEPTION '{message}' USING ERRCODE = '{errcode}'; END IF;
            RETURN NULL; END $$ LANGUAGE plpgsql"""))
        s.execute(text(f"CREATE TRIGGER fail_once BEFORE INSERT ON {table} FOR EACH STATEMENT "
                       "EXECUTE FUNCTION fail_once()"))


def test_a_full_disk_under_the_epoch_copy_queues_the_job_again(pg, monkeypatch):
    """The epochs go to PostgreSQL by COPY on the driver's own cursor, whose errors were not
    SQLAlchemy's: a DiskFull at an epoch write failed the job for good as an "internal error",
    with the server's CONTEXT lines in it, where any other database error queues it again."""
    client, sessions, fast = pg
    resp = client.post("/v1/jobs", json=iris_job(epochs=6))
    assert resp.status_code == 202, resp.get_json()
    job_id = resp.get_json()["id"]
    fail_once(sessions, "epochs", "53100", "could not extend file")
    monkeypatch.setattr(training, "FLUSH_SECONDS", 0.0)

    assert run_job(sessions, job_id, settings=fast) is True  # the caller sends it again
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "queued" and job["attempts"] == 1, job
    assert job["error"] == "queued again after database error: DiskFull: could not extend file", job

    assert run_job(sessions, job_id, settings=fast) is False
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "succeeded" and job["attempts"] == 2 and job["error"] is None, job
    with sessions() as s:
        assert list(s.scalars(select(EpochRecord.epoch).where(EpochRecord.job_id == job_id)
                              .order_by(EpochRecord.epoch))) == [1, 2, 3, 4, 5, 6]


def test_a_job_row_locked_by_a_frozen_worker_holds_neither_the_reconciler_nor_a_cancel(pg_app, monkeypatch):
    """A training process stopped (SIGSTOP) inside a transaction kept its job's row locked: every
    worker's reconciler waited on that row for good, so no other lost job was taken over, and a
    cancel of it hung. The reconciler skips a locked row for the round, the API waits at most
    its lock timeout (then 503, try again), and the server ends a transaction idle for a minute."""
    from datetime import timedelta

    from sqlalchemy import update

    import app as app_module
    from app import create_app
    from core.db import Job, JobStatus
    from core.db.models import utcnow
    from tests.app.test_dependencies_down import timed
    from worker.reconciler import reconcile

    client, sessions = pg_app.test_client(), pg_app.extensions["backprop"]["sessions"]
    frozen, lost = (client.post("/v1/jobs", json=iris_job(epochs=2)).get_json()["id"] for _ in range(2))
    with sessions.begin() as s:  # both running with a stale heartbeat: lost, for the reconciler
        s.execute(update(Job).values(status=JobStatus.RUNNING, attempts=1, enqueued_at=None,
                                     heartbeat_at=utcnow() - timedelta(hours=1)))
    ext = pg_app.extensions["backprop"]
    engine = ext["engine"]
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar() == "1min"
        assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "1min"
        # and a partitioned connection fails within about 30 s rather than never
        dsn = conn.connection.driver_connection.info.get_parameters()
        assert dsn["keepalives_idle"] == "10" and dsn["tcp_user_timeout"] == "30000", dsn

    holder = engine.connect()
    holder.exec_driver_sql("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (frozen,))  # and stays idle
    try:
        sent, _ = timed(lambda: reconcile(sessions, ext["celery"], ext["settings"]), limit=30)
        assert sent == [lost], "the reconciler waited on the locked row"

        monkeypatch.setattr(app_module, "API_LOCK_TIMEOUT_SECONDS", 0.5)
        quick = create_app(ext["settings"])
        answer, _ = timed(lambda: quick.test_client().post(f"/v1/jobs/{frozen}/cancel"), limit=30)
        assert answer.status_code == 503 and answer.headers["Retry-After"], answer.get_json()
        quick.extensions["backprop"]["engine"].dispose()
    finally:
        holder.rollback()
        holder.close()
    assert reconcile(sessions, ext["celery"], ext["settings"]) == [frozen]  # its turn, once free


def test_a_checkpoint_being_written_holds_neither_a_cancel_nor_the_heartbeat(pg, pg_app, monkeypatch):
    """A checkpoint was inserted under the job row's lock: a cancel and the heartbeat waited for
    the whole blob (200 MB took 8 s here; past the API's lock wait the cancel was a 503). It is
    inserted before the row is locked now, and the API's lock does not wait for the KEY SHARE
    lock that the insert's foreign key check holds."""
    import threading
    import time

    import app as app_module
    from app import create_app
    from core.db import Job
    from core.store import latest_checkpoint
    from tests.app.test_dependencies_down import timed

    client, sessions, fast = pg
    job_id = client.post("/v1/jobs", json=iris_job(epochs=3)).get_json()["id"]
    # a blob that takes as long as the test wants: an INSERT into checkpoints waits, after its
    # foreign key check (AFTER triggers fire in name order, RI_... first), on a lock held here
    with sessions.begin() as s:
        s.execute(text("""CREATE FUNCTION slow_blob() RETURNS trigger AS $$ BEGIN
            PERFORM pg_advisory_xact_lock_shared(4242); RETURN NULL; END $$ LANGUAGE plpgsql"""))
        s.execute(text("CREATE TRIGGER slow_blob AFTER INSERT ON checkpoints FOR EACH ROW "
                       "EXECUTE FUNCTION slow_blob()"))
    engine = pg_app.extensions["backprop"]["engine"]
    holder = engine.connect()
    holder.exec_driver_sql("SELECT pg_advisory_lock(4242)")
    ended = []
    worker = threading.Thread(target=lambda: ended.append(
        run_job(sessions, job_id, settings=dataclasses.replace(fast, checkpoint_seconds=0.0))), daemon=True)
    try:
        worker.start()
        deadline = time.monotonic() + 30
        with engine.connect() as watcher:  # until the checkpoint insert waits on the lock
            while not watcher.exec_driver_sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory'"
                                              ).scalar():
                assert time.monotonic() < deadline and worker.is_alive(), "the checkpoint was never written"
                time.sleep(0.05)
        with sessions() as s:
            beat = s.get(Job, job_id).heartbeat_at
        monkeypatch.setattr(app_module, "API_LOCK_TIMEOUT_SECONDS", 2)
        quick = create_app(pg_app.extensions["backprop"]["settings"])
        answer, _ = timed(lambda: quick.test_client().post(f"/v1/jobs/{job_id}/cancel"), limit=30)
        quick.extensions["backprop"]["engine"].dispose()
        assert answer.status_code == 202 and answer.get_json()["status"] == "cancelling", answer.get_json()
        time.sleep(0.3)  # fifteen heartbeats' time
        with sessions() as s:
            assert s.get(Job, job_id).heartbeat_at > beat, "the heartbeat waited for the checkpoint"
    finally:
        holder.exec_driver_sql("SELECT pg_advisory_unlock(4242)")
        holder.close()
        worker.join(30)
    assert ended == [False]
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "cancelled" and job["progress"]["epoch"] == 1, job
    with sessions() as s:
        assert latest_checkpoint(s, job_id) is None  # dropped once the job ended
