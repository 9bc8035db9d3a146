"""The worker's metrics port (taken before the worker starts, on an IPv6 host too) and the
multiprocess metrics folders of servers that have ended."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import subprocess
import sys
import urllib.request

import pytest

from core.metrics import prepare_multiprocess_dir, remove_dead_server_dirs


def a_dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_folders_of_servers_that_ended_are_removed(tmp_path):
    """Every start made a new api-PID or worker-PID folder; those of ended processes stayed."""
    parent = tmp_path / "prometheus"
    dead = a_dead_pid()
    gone = [parent / f"api-{dead}", parent / f"worker-{dead}"]
    kept = [parent / f"api-{os.getppid()}", parent / "worker-1",  # running processes (pid 1 always runs)
            parent / f"other-{dead}", parent / f"api-{dead}x", parent / "api-", parent / f"Api-{dead}"]
    for folder in gone + kept:
        folder.mkdir(parents=True)
        (folder / "counter_1.db").write_bytes(b"x")
    (parent / f"worker-{dead}.txt").write_text("not a folder of ours")
    mine = parent / f"worker-{os.getpid()}"
    mine.mkdir()
    (mine / "old.db").write_bytes(b"x")
    assert prepare_multiprocess_dir(mine) == str(mine)
    assert mine.is_dir() and not list(mine.iterdir())  # emptied, as before
    assert not any(f.exists() for f in gone)
    assert all(f.is_dir() for f in kept) and (parent / f"worker-{dead}.txt").exists()


def test_a_folder_whose_process_runs_is_kept_even_when_named_elsewhere(tmp_path):
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / f"worker-{running.pid}").mkdir()
        assert remove_dead_server_dirs(tmp_path) == []
        assert remove_dead_server_dirs(tmp_path / "missing") == []  # no folder yet: nothing to do
    finally:
        running.kill()
        running.wait()
    assert remove_dead_server_dirs(tmp_path) == [tmp_path / f"worker-{running.pid}"]


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_worker_metrics_serve_on_an_ipv6_host(caplog, monkeypatch, tmp_path):
    monkeypatch.setenv("BACKPROP_DATA_DIR", str(tmp_path))  # the module's settings, if imported here
    from worker.celery_app import bind_metrics_server, serve_metrics

    caplog.set_level(logging.INFO, "backprop.worker")
    server = bind_metrics_server(0, "::1")  # as the worker does: bound at worker_init, served when ready
    serve_metrics(server, "::1")
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://[::1]:{port}/metrics", timeout=5) as resp:
            assert resp.status == 200 and b"# HELP" in resp.read()
        assert f"worker metrics on [::1]:{port}/metrics" in caplog.messages
    finally:
        server.shutdown()
        server.server_close()


def test_a_taken_metrics_port_stops_the_worker_naming_the_variable(monkeypatch, caplog, tmp_path):
    """A second worker with the same BACKPROP_WORKER_METRICS_PORT ran on without metrics, the only
    sign an ERROR "Signal handler ... raised OSError(98)". Now the port is bound at worker_init,
    and a SystemExit passes through Celery's signal dispatch (it catches Exception only)."""
    monkeypatch.setenv("BACKPROP_DATA_DIR", str(tmp_path))  # the module's settings, if imported here
    import worker.celery_app as app

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        monkeypatch.setattr(app, "settings", dataclasses.replace(app.settings, worker_metrics_port=port,
                                                                 host="127.0.0.1"))
        monkeypatch.setattr(app, "_metrics_server", None)
        with pytest.raises(SystemExit) as exit_info:
            app.worker_init.send(sender=None)
        assert exit_info.value.code == 2
        assert any(r.levelno == logging.CRITICAL and f"BACKPROP_WORKER_METRICS_PORT={port} cannot be used"
                   in r.getMessage() for r in caplog.records)
    finally:
        holder.close()
    app.worker_init.send(sender=None)  # free again: bound, and served once the worker is ready
    try:
        assert app._metrics_server is not None and app._metrics_server.server_address[1] == port
    finally:
        app._metrics_server.server_close()
