"""The reconciler re-sends what the broker may have lost; the API records jobs even when the
broker is down at submit time, and they reach a worker once it is back."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from sqlalchemy import update

from app import create_app
from core.db import Job
from core.db.models import utcnow
from core.queue import make_celery
from tests.data import iris_job
from worker.reconciler import reconcile


def messages(settings) -> list[str]:
    return [p.read_text() for p in settings.broker_dir.glob("*.msg")]


def test_broker_down_at_submit_records_the_job_and_the_reconciler_sends_it(migrated, tmp_path):
    down = dataclasses.replace(migrated, broker_url="redis://127.0.0.1:1/0", auth="off")  # nothing listens there
    app = create_app(down)
    try:
        resp = app.test_client().post("/v1/jobs", json=iris_job(epochs=2))
        assert resp.status_code == 202
        job_id = resp.get_json()["id"]
        sessions = app.extensions["backprop"]["sessions"]
        with sessions() as s:
            job = s.get(Job, job_id)
            assert job.status == "queued" and job.enqueued_at is None
        # the broker is back (the embedded one here): the reconciler sends the id
        sent = reconcile(sessions, make_celery(migrated), migrated)
        assert sent == [job_id]
        assert any(job_id in m for m in messages(migrated))
        with sessions() as s:
            assert s.get(Job, job_id).enqueued_at is not None
        assert reconcile(sessions, make_celery(migrated), migrated) == []  # not again right away
    finally:
        app.extensions["backprop"]["engine"].dispose()


def test_running_job_with_stale_heartbeat_is_sent_again(client, sessions, migrated):
    fresh = client.post("/v1/jobs", json=iris_job(epochs=2)).get_json()["id"]
    stale = client.post("/v1/jobs", json=iris_job(epochs=2)).get_json()["id"]
    long_ago = utcnow() - timedelta(hours=1)
    with sessions.begin() as s:
        s.execute(update(Job).where(Job.id == fresh).values(status="running", heartbeat_at=utcnow(),
                                                            enqueued_at=long_ago))
        s.execute(update(Job).where(Job.id == stale).values(status="running", heartbeat_at=long_ago,
                                                            enqueued_at=long_ago))
    assert reconcile(sessions, make_celery(migrated), migrated) == [stale]


def test_old_queued_job_is_sent_again(client, sessions, migrated):
    job_id = client.post("/v1/jobs", json=iris_job(epochs=2)).get_json()["id"]
    assert reconcile(sessions, make_celery(migrated), migrated) == []  # just enqueued
    with sessions.begin() as s:
        s.execute(update(Job).values(enqueued_at=utcnow() - timedelta(hours=1)))
    assert reconcile(sessions, make_celery(migrated), migrated) == [job_id]


def test_a_job_waiting_in_a_backlog_is_sent_again_less_and_less_often(client, sessions, migrated):
    """Every queued job older than requeue_after was sent again every round: a backlog of jobs
    waiting an hour held a duplicate message per job per minute."""
    job_id = client.post("/v1/jobs", json=iris_job(epochs=2)).get_json()["id"]
    requeue = timedelta(seconds=migrated.requeue_after_seconds)

    def sent_after(waited: timedelta, since_sent: timedelta) -> bool:
        """Whether a job last sent when it had waited `waited`, `since_sent` ago, is sent now."""
        now = utcnow()
        with sessions.begin() as s:
            s.execute(update(Job).values(created_at=now - since_sent - waited, enqueued_at=now - since_sent))
        return reconcile(sessions, make_celery(migrated), migrated) == [job_id]

    assert sent_after(timedelta(0), 1.5 * requeue)  # sent when submitted: once more after requeue_after
    assert not sent_after(4 * requeue, 3 * requeue)  # had waited 4 when sent: not before 4 more
    assert sent_after(4 * requeue, 4.5 * requeue)
    assert sent_after(100 * requeue, 10.5 * requeue)  # the wait stops growing at 10 x requeue_after


def test_the_reconciler_thread_purges_expired_idempotency_keys(client, sessions, migrated):
    from core.db import IdempotencyRecord
    from worker.reconciler import ReconcilerThread

    for key in ("old", "new"):
        assert client.post("/v1/jobs", json=iris_job(epochs=2), headers={"Idempotency-Key": key}).status_code == 202
    with sessions.begin() as s:
        s.execute(update(IdempotencyRecord).where(IdempotencyRecord.key == "old")
                  .values(created_at=utcnow() - timedelta(hours=migrated.idempotency_hours + 1)))
    thread = ReconcilerThread(sessions, make_celery(migrated), migrated)
    thread.stopping.set()  # one round, then stop
    thread.run()
    with sessions() as s:
        assert [r.key for r in s.query(IdempotencyRecord)] == ["new"]
