"""`backprop run` (what `make run` starts): migrates, serves the API with a worker, trains a job,
and Ctrl-C stops every process it started, handing the training job back to the queue."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from core.db import Job, make_engine, make_sessionmaker
from tests.data import iris_job

from .stack import BACKPROP, Stack

pytestmark = pytest.mark.e2e


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its parent is gone for our purpose
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def start_run(tmp_path) -> tuple[Stack, subprocess.Popen]:
    """`backprop run` in its own session, answering; the Stack only for its env, port and HTTP helpers."""
    stack = Stack(tmp_path)
    with open(tmp_path / "run.log", "wb") as log:
        proc = subprocess.Popen([BACKPROP, "run"], env=stack.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    stack.procs["run"] = proc
    try:
        stack.wait_ready()
    except BaseException:
        for p in descendants(proc.pid) | {proc.pid}:
            os.kill(p, signal.SIGKILL)
        raise
    return stack, proc


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "terminal-closed"])
def test_run_trains_and_ctrl_c_stops_everything(tmp_path, stop):
    """SIGHUP, which closing the terminal of `make run` sends, killed `run` alone and left the
    API and the worker serving and training (they run in sessions of their own)."""
    stack, proc = start_run(tmp_path)
    try:
        status, job = stack.request("POST", "/v1/jobs", iris_job(epochs=5))
        assert status == 202
        assert stack.wait_for_job(job["id"])["status"] == "succeeded"
        status, job = stack.request("POST", "/v1/jobs", iris_job(epochs=100000))  # still training at Ctrl-C
        assert stack.wait_for_job(job["id"], until=("running",))["status"] == "running"
        started = descendants(proc.pid)
        assert len(started) >= 4  # gunicorn and its worker, celery and its pool process
        proc.send_signal(stop)
        assert proc.wait(timeout=30) == 0
        deadline = time.monotonic() + 15
        while any(alive(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in started if alive(p)], "a process started by `backprop run` outlived it"
        # the job that was training was handed back to the queue (a warm shutdown), not left
        # `running` until its heartbeat goes stale
        engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'backprop.db'}")
        try:
            with make_sessionmaker(engine)() as s:
                assert s.get(Job, job["id"]).status == "queued"
        finally:
            engine.dispose()
    finally:
        for p in descendants(proc.pid):
            os.kill(p, signal.SIGKILL)


def test_run_exits_with_the_failure_of_a_server_that_died(tmp_path):
    """Celery's main process killed: `run` stops the API and exits 137, as a shell reports a
    SIGKILL (it exited 0, since the API it then stopped exited cleanly)."""
    stack, proc = start_run(tmp_path)
    try:
        started = descendants(proc.pid)
        children = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) in started
                    and _parent(int(p)) == proc.pid]
        worker = next(p for p in children if b"celery" in _cmdline(p))
        os.kill(worker, signal.SIGKILL)
        assert proc.wait(timeout=30) == 128 + signal.SIGKILL
        deadline = time.monotonic() + 15
        while any(alive(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in started if alive(p)]
    finally:
        for p in descendants(proc.pid):
            os.kill(p, signal.SIGKILL)


def _cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])
