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
