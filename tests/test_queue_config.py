"""The Celery settings crash safety relies on: late acknowledgement, requeue when the worker
process is lost, prefetch of one, JSON only, and a visibility timeout beyond the job time limit."""

from __future__ import annotations

from core.config import Settings
from core.queue import make_celery


def test_celery_is_configured_for_at_least_once_delivery():
    settings = Settings(broker_url="redis://127.0.0.1:6379/0", job_time_limit=7200)
    conf = make_celery(settings).conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_serializer == "json" and list(conf.accept_content) == ["json"]
    assert conf.broker_transport_options["visibility_timeout"] > settings.job_time_limit


def test_embedded_broker_keeps_its_files_under_the_data_dir(tmp_path):
    settings = Settings(data_dir=tmp_path)
    opts = make_celery(settings).conf.broker_transport_options
    assert opts["data_folder_in"] == opts["data_folder_out"] == str(tmp_path / "broker")
    assert opts["control_folder"].startswith(str(tmp_path))
    assert opts["polling_interval"] <= 0.1


def test_embedded_broker_messages_appear_only_when_whole(tmp_path, monkeypatch):
    """kombu's own filesystem transport writes the message file in place, where a polling
    worker can read it empty and die (kombu#1551); ours renames a finished file in."""
    import json
    import os

    import core.queue

    celery = make_celery(Settings(data_dir=tmp_path))
    folder = tmp_path / "broker"
    seen = []
    real_replace = os.replace

    def checking_replace(src, dst):
        assert not list(folder.glob("*.msg")), "a message was visible before it was whole"
        with open(src, "rb") as f:
            seen.append(json.loads(f.read()))  # complete JSON by the time it moves
        real_replace(src, dst)

    monkeypatch.setattr(core.queue.os, "replace", checking_replace)
    with celery.connection_for_write() as conn:
        assert isinstance(conn.transport, core.queue.AtomicFilesystemTransport)
    core.queue.enqueue_training(celery, "job-1")
    assert len(seen) == 1 and seen[0]["headers"]["argsrepr"] == "['job-1']"
    assert len(list(folder.glob("*.training.msg"))) == 1
    assert not os.listdir(folder / ".staging")
