"""`backprop run` (what `make run` starts): migrates, serves the API with a worker, trains a job,
and Ctrl-C stops every process it started."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.data import iris_job

from .stack import BACKPROP, Stack

pytestmark = pytest.mark.e2e


def alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_run_trains_and_ctrl_c_stops_everything(tmp_path):
    stack = Stack(tmp_path)  # only for its env, port and HTTP helpers
    with open(tmp_path / "run.log", "wb") as log:
        proc = subprocess.Popen([BACKPROP, "run"], env=stack.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        stack.procs["run"] = proc
        stack.wait_ready()
        status, job = stack.request("POST", "/v1/jobs", iris_job(epochs=5))
        assert status == 202
        assert stack.wait_for_job(job["id"])["status"] == "succeeded"
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(timeout=30) == 0
        deadline = time.monotonic() + 15
        while alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(proc.pid), "a child of `backprop run` outlived it"
    finally:
        if alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
