"""The Celery application both sides share: the API only sends task names and job ids
through it, the worker registers the tasks. The broker carries ids, never data."""

from __future__ import annotations

import os
import uuid
from time import monotonic

from celery import Celery
from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps

from .config import Settings

TRAIN_JOB_TASK = "backprop.train_job"
QUEUE = "training"


class _AtomicFilesystemChannel(filesystem.Channel):
    """kombu's filesystem channel writes a message file in place, so a worker polling the
    folder can take it while it is still empty or half written and die on the JSON
    (kombu#1551; seen here with a fast client). Here the file is written in a staging folder
    and renamed in: a rename within one file system is atomic, so readers see whole messages."""

    def _put(self, queue, payload, **kwargs):
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"  # kombu's naming
        staging = os.path.join(self.data_folder_out, ".staging")  # listdir skips: not *.msg
        path = os.path.join(staging, name)
        try:
            os.makedirs(staging, exist_ok=True)
            with open(path, "wb") as f:
                f.write(dumps(payload).encode())
            os.replace(path, os.path.join(self.data_folder_out, name))
        except OSError as exc:
            raise ChannelError(f"cannot add message {name!r} to {self.data_folder_out!r}") from exc


class AtomicFilesystemTransport(filesystem.Transport):
    Channel = _AtomicFilesystemChannel


def make_celery(settings: Settings) -> Celery:
    celery = Celery("backprop", broker=settings.broker_url)
    conf: dict = {
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "result_backend": None,
        # A job is acknowledged only after it ran, and a worker takes one job at a time, so a
        # crash leaves the message to be delivered again.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": QUEUE,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    }
    if settings.embedded_broker:
        folder = str(settings.broker_dir)
        settings.broker_dir.mkdir(parents=True, exist_ok=True)
        conf["broker_transport"] = f"{__name__}:AtomicFilesystemTransport"
        conf["broker_transport_options"] = {
            "data_folder_in": folder, "data_folder_out": folder,
            "control_folder": str(settings.broker_dir / "control"),
            "polling_interval": settings.broker_poll_seconds,
        }
    else:
        # longer than any job may run, so Redis does not hand a running job to a second worker
        conf["broker_transport_options"] = {"visibility_timeout": int(settings.job_time_limit) + 3600,
                                            # a Redis that accepts and never answers must not hang
                                            # a submit or /readyz (the worker's BRPOP waits 1 s)
                                            **REDIS_TIMEOUTS}
    # a broker that is down must not hang the API: fail fast, the reconciler enqueues later
    conf["broker_connection_timeout"] = 3
    conf["task_publish_retry_policy"] = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5,
                                         "interval_max": 1}
    celery.conf.update(conf)
    return celery


# with one publish retry, a Redis that stops answering holds a submit about 6 s (5 s and two
# retries held it 21.7 s); the worker's BRPOP waits 1 s, within the socket timeout
REDIS_TIMEOUTS = {"socket_timeout": 2, "socket_connect_timeout": 2}


def enqueue_training(celery: Celery, job_id: str) -> None:
    celery.send_task(TRAIN_JOB_TASK, args=[job_id], queue=QUEUE)
