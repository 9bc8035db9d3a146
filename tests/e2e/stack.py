"""Starts the real processes the way `make run` and docker-compose do (`backprop migrate`,
`backprop serve` = gunicorn, `backprop worker` = celery) and talks to them over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from core.db import EpochRecord, Job, make_engine, make_sessionmaker
from core.nn import Network, Trainer
from core.store import dataset_arrays, load_weights

BACKPROP = str(Path(sys.executable).with_name("backprop"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    def __init__(self, tmp: Path, env: dict[str, str] | None = None):
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "BACKPROP_DATA_DIR": str(tmp / "data"), "BACKPROP_PORT": str(self.port),
                    "BACKPROP_WEB_WORKERS": "1", "BACKPROP_WORKER_CONCURRENCY": "1", **(env or {})}
        self.procs: dict[str, subprocess.Popen] = {}
        self.api_key: str | None = None

    def run(self, *args: str) -> str:
        return subprocess.run([BACKPROP, *args], env=self.env, check=True, timeout=120, text=True,
                              capture_output=True).stdout

    def start(self, name: str, *args: str) -> subprocess.Popen:
        with open(self.tmp / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen([BACKPROP, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs[name] = proc
        return proc

    def up(self, workers: int = 1, tenant: str = "e2e") -> Stack:
        """Start the stack; if it does not come up, stop what did start (a caller's `finally`
        that would have stopped it is not reached yet), then raise."""
        try:
            self.run("migrate")
            self.api_key = self.run("keys", "create", "--tenant", tenant).strip()
            self.start("api", "serve")
            for i in range(workers):
                self.start(f"worker{i}", "worker")
            self.wait_ready()
        except BaseException:
            self.down()
            raise
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited early:\n{self.logs()}")
            try:
                status, _ = self.request("GET", "/readyz")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"API not ready after {timeout}s\n{self.logs()}")

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        self._signal(name, sig)
        self._wait(name, timeout)

    def down(self) -> None:
        """Every process told at once, then waited for: a worker's warm shutdown takes a few
        seconds (Celery's loop on the file queue looks at its stop flag every 2 s)."""
        names = list(self.procs)
        for name in names:
            self._signal(name, signal.SIGTERM)
        for name in names:
            self._wait(name, timeout=20)

    def _signal(self, name: str, sig: int) -> None:
        """SIGKILL goes to the process group, a dead machine's way; any other signal to the main
        process only, as `docker stop` sends it. Celery's pool processes die of a SIGTERM of their
        own, and a worker whose pool lost its process while shutting down could hang until killed."""
        proc = self.procs[name]
        if proc.poll() is None:
            if sig == signal.SIGKILL:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    def _wait(self, name: str, timeout: float) -> None:
        """Then whatever is left of its group (it has a session of its own) is killed."""
        proc = self.procs.pop(name)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def logs(self) -> str:
        out = []
        for f in sorted(self.tmp.glob("*.log")):
            out.append(f"--- {f.name}\n{f.read_text(errors='replace')[-4000:]}")
        return "\n".join(out)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data else {}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw, status = resp.read(), resp.status
        except urllib.error.HTTPError as err:
            raw, status = err.read(), err.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    def wait_for_job(self, job_id: str, timeout: float = 120, until=("succeeded", "failed", "cancelled")) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, job = self.request("GET", f"/v1/jobs/{job_id}")
            if job["status"] in until:
                return job
            time.sleep(0.2)
        raise TimeoutError(f"job {job_id} still {job['status']}\n{self.logs()}")


def assert_like_uninterrupted_runs(db_url: str, job_ids: list[str], epochs: int) -> None:
    """Each job recorded every epoch exactly once and stored the weights that the engine alone,
    trained without interruption (one BLAS thread), gives for the same job."""
    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as s, threadpool_limits(limits=1):
            for job_id in job_ids:
                done = [r.epoch for r in s.query(EpochRecord).filter_by(job_id=job_id).order_by(EpochRecord.epoch)]
                assert done == list(range(1, epochs + 1)), f"job {job_id}: epochs missing or repeated"
                job = s.get(Job, job_id)
                x, y = dataset_arrays(job.dataset)
                net = Network.from_spec(job.model_spec, seed=job.training_spec["seed"])
                Trainer(net, job.training_spec).fit(x, y)
                stored = load_weights(s, job_id)
                for name, expected in net.get_weights().items():
                    np.testing.assert_array_equal(stored[name], expected, err_msg=f"{job_id} {name}")
    finally:
        engine.dispose()
