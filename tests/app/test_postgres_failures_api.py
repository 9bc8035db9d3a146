"""Submits whose job is committed when PostgreSQL fails after it: the answer stays the 202,
since a 503 "try again" would have the client run the job twice. Faults injected by triggers
on a test database of its own."""

from __future__ import annotations

from sqlalchemy import func, select, text

from core.db import Job
from tests.data import iris_job


def fail_once(sessions, table: str, when: str, errcode: str = "57P01") -> None:
    """The next UPDATE of `table` whose row matches `when` raises `errcode` (admin_shutdown by
    default); the ones after it pass (a sequence: its nextval survives the rollback)."""
    with sessions.begin() as s:
        s.execute(text("CREATE SEQUENCE fail_once"))
        s.execute(text(f"""CREATE FUNCTION fail_once() RETURNS trigger AS $$ BEGIN
            IF nextval('fail_once') = 1 THEN
                RAISE EXCEPTION 'terminating connection' USING ERRCODE = '{errcode}';
            END IF; RETURN NEW; END $$ LANGUAGE plpgsql"""))
        s.execute(text(f"CREATE TRIGGER fail_once BEFORE UPDATE ON {table} FOR EACH ROW WHEN ({when}) "
                       "EXECUTE FUNCTION fail_once()"))


def jobs(sessions) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(Job))


def test_a_submit_whose_sending_cannot_be_recorded_is_still_a_202(pg_app):
    """The job was committed and sent, then recording when it was sent failed: the client got a
    503 database_unavailable, "try again shortly", and a retry ran it twice."""
    client, sessions = pg_app.test_client(), pg_app.extensions["backprop"]["sessions"]
    fail_once(sessions, "jobs", "OLD.enqueued_at IS DISTINCT FROM NEW.enqueued_at")
    resp = client.post("/v1/jobs", json=iris_job(epochs=2))
    assert resp.status_code == 202, resp.get_json()
    assert resp.get_json()["status"] == "queued" and resp.headers["Location"].endswith(resp.get_json()["id"])
    assert jobs(sessions) == 1
    with sessions() as s:  # the reconciler sends it again (a duplicate the worker drops)
        assert s.scalar(select(Job.enqueued_at)) is None


def test_an_idempotent_submit_whose_answer_cannot_be_kept_at_once_is_replayed(pg_app):
    """The answer for an Idempotency-Key is written after the job is committed: when that write
    failed, the client got a 503, then 409 idempotency_key_in_use for five minutes, then a second
    job. The write is tried again, and the answer is the 202 either way."""
    client, sessions = pg_app.test_client(), pg_app.extensions["backprop"]["sessions"]
    fail_once(sessions, "idempotency_keys", "NEW.response IS NOT NULL")
    headers = {"Idempotency-Key": "submit-1"}
    first = client.post("/v1/jobs", json=iris_job(epochs=2), headers=headers)
    assert first.status_code == 202, first.get_json()
    again = client.post("/v1/jobs", json=iris_job(epochs=2), headers=headers)
    assert again.status_code == 202 and again.headers.get("Idempotent-Replayed") == "true", again.get_json()
    assert again.get_json()["id"] == first.get_json()["id"] and jobs(sessions) == 1


def test_a_jobs_storage_bound_holds_what_postgresql_stores(pg_app):
    """The bound counted names by their letters: a non-ASCII letter is stored as a 6-byte JSON
    escape in every epoch row (3x over with 128-letter names), and the job's and weights' rows
    were not counted at all (64 one-unit layers stored 15 KB against a bound of 6 KB)."""
    import random

    from sqlalchemy import text

    from tests.data import iris_job
    from worker.training import run_job

    client, sessions = pg_app.test_client(), pg_app.extensions["backprop"]["sessions"]
    rng = random.Random(0)
    letters = ["".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(128)) for _ in range(32)]
    emoji = ["".join(chr(rng.randrange(0x1F300, 0x1F64F)) for _ in range(64)) for _ in range(32)]
    for names in (letters.__getitem__, emoji.__getitem__, lambda i: None):
        body = iris_job(epochs=40, validation_split=0.2)
        layers = [{"type": "dense", "units": 1, "activation": "tanh", "name": names(i)} for i in range(32)]
        body["model"]["layers"] = [*layers, {"type": "dense", "units": 3, "activation": "softmax"}]
        resp = client.post("/v1/jobs", json=body)
        assert resp.status_code == 202, resp.get_json()
        job_id = resp.get_json()["id"]
        run_job(sessions, job_id)
        with sessions() as s:
            stored = s.execute(text(
                "SELECT (SELECT pg_column_size(j.*) FROM jobs j WHERE id = :j)"
                " + (SELECT sum(pg_column_size(w.*)) FROM weights w WHERE job_id = :j)"
                " + (SELECT sum(pg_column_size(e.*)) FROM epochs e WHERE job_id = :j), "
                "(SELECT storage_bytes FROM jobs WHERE id = :j)"), {"j": job_id}).one()
        assert 0 < stored[0] <= stored[1], (names(0), stored)
