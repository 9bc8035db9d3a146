"""`backprop serve` and `backprop worker` started for real, briefly: gunicorn on an IPv6
address with every line JSON, and two workers on one host with the same metrics port and
node names of their own."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

BACKPROP = str(Path(sys.executable).with_name("backprop"))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ipv6_loopback() -> bool:
    try:
        free_port("::1")
        return True
    except OSError:
        return False


@pytest.fixture
def env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKPROP_")}
    env.update(BACKPROP_DATA_DIR=str(tmp_path / "data"), BACKPROP_WEB_WORKERS="1", BACKPROP_WORKER_CONCURRENCY="1")
    return env


def start(tmp_path: Path, name: str, env: dict, *args: str) -> subprocess.Popen:
    with open(tmp_path / f"{name}.log", "wb") as log:
        return subprocess.Popen([BACKPROP, *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # the process we started, by its id
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for(check, proc: subprocess.Popen, log: Path, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        assert proc.poll() is None, log.read_text()
        time.sleep(0.1)
    raise AssertionError(f"timed out\n{log.read_text()}")


def live(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/livez", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def json_lines(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]  # any line not JSON fails here


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_serve_on_ipv6_with_json_lines_only(tmp_path, env):
    """`BACKPROP_HOST=::1 backprop serve` failed ('' is not a valid port number); and gunicorn's
    own lines were plain text among the JSON ones."""
    port = free_port("::1")
    env.update(BACKPROP_HOST="::1", BACKPROP_PORT=str(port))
    api = start(tmp_path, "api", env, "serve")
    try:
        wait_for(lambda: live(f"http://[::1]:{port}"), api, tmp_path / "api.log")
    finally:
        stop(api)
    entries = json_lines(tmp_path / "api.log")
    messages = [e["message"] for e in entries]
    assert any(m.startswith("Starting gunicorn") for m in messages)
    assert f"Listening at: http://[::1]:{port} ({api.pid})" in messages
    assert any(e["logger"] == "gunicorn.access" and e["message"].startswith("GET /livez") for e in entries)


def test_serve_opens_no_control_socket_in_the_users_home(tmp_path, env):
    """Gunicorn 27 opened ~/.gunicorn/gunicorn.ctl: one path for every instance on a host, and an
    instance that stopped removed the socket of another that still ran."""
    port = free_port()
    env.update(HOME=str(tmp_path / "home"), BACKPROP_PORT=str(port))
    (tmp_path / "home").mkdir()
    api = start(tmp_path, "api", env, "serve")
    try:
        wait_for(lambda: live(f"http://127.0.0.1:{port}"), api, tmp_path / "api.log")
        assert not (tmp_path / "home" / ".gunicorn").exists()
    finally:
        stop(api)


def test_two_workers_on_one_host_with_one_metrics_port(tmp_path, env):
    """The second worker ran without metrics (an ERROR about OSError(98) its only sign), and both
    were celery@HOST. Now the second stops at startup naming BACKPROP_WORKER_METRICS_PORT."""
    subprocess.run([BACKPROP, "migrate"], env=env, check=True, capture_output=True, timeout=60)
    port = free_port()
    env["BACKPROP_WORKER_METRICS_PORT"] = str(port)
    first = start(tmp_path, "worker0", env, "worker")
    try:
        log0 = tmp_path / "worker0.log"
        wait_for(lambda: "worker metrics on" in log0.read_text(), first, log0)
        second = start(tmp_path, "worker1", env, "worker")
        try:
            assert second.wait(timeout=30) == 2
        finally:
            stop(second)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.status == 200  # the first keeps serving
    finally:
        stop(first)
    refused = json_lines(tmp_path / "worker1.log")
    assert any(e["level"] == "CRITICAL" and e["message"].startswith(f"BACKPROP_WORKER_METRICS_PORT={port} cannot")
               for e in refused), refused
    entries = json_lines(tmp_path / "worker0.log")  # the banner left out, shutdown notices as JSON
    messages = [e["message"] for e in entries]
    assert f"backprop-{first.pid}@{socket.gethostname()} ready." in messages, messages
    assert any(m.startswith(f"worker backprop-{first.pid}@") and "queue training" in m for m in messages)
    assert f"worker metrics on 127.0.0.1:{port}/metrics" in messages
    assert "worker: Warm shutdown (MainProcess)" in messages
