"""What `backprop serve`, `worker` and `run` start: the addresses they bind and print (IPv6
bracketed), the log level and format they pass on, and the worker's own node name."""

from __future__ import annotations

import os
import sys

import pytest
from click.testing import CliRunner

import core.cli
from core.cli import main, serve_command, worker_command
from core.config import load_settings


@pytest.fixture(autouse=True)
def data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("BACKPROP_DATA_DIR", str(tmp_path))


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


@pytest.mark.parametrize("host, bind", [("::1", "[::1]:8123"), ("::", "[::]:8123"), ("[::1]", "[::1]:8123"),
                                        ("127.0.0.1", "127.0.0.1:8123")])
def test_serve_binds_ipv6_in_brackets(monkeypatch, host, bind):
    """`BACKPROP_HOST=::1 backprop serve` failed: gunicorn read "::1:8000" as '' is not a valid port."""
    monkeypatch.setenv("BACKPROP_HOST", host)
    monkeypatch.setenv("BACKPROP_PORT", "8123")
    assert option(serve_command(load_settings()), "--bind") == bind


@pytest.mark.parametrize("level", ["DEBUG", "WARNING", "error"])
def test_serve_and_worker_follow_the_log_level(monkeypatch, level):
    monkeypatch.setenv("BACKPROP_LOG_LEVEL", level)
    s = load_settings()
    assert option(serve_command(s), "--log-level") == level.lower()
    assert option(worker_command(s), "--loglevel") == level.upper()


def test_each_worker_has_a_node_name_of_its_own(monkeypatch):
    """All workers on a host were celery@HOST. The pid is that of `backprop worker`, which
    execs Celery and so keeps it."""
    command = worker_command(load_settings())
    assert option(command, "--hostname") == f"backprop-{os.getpid()}@%h"


def test_the_worker_banner_is_left_out_in_json_mode(monkeypatch):
    command = worker_command(load_settings())
    assert command.index("--quiet") < command.index("worker")  # celery's own option, before the subcommand
    monkeypatch.setenv("BACKPROP_LOG_FORMAT", "text")
    assert "--quiet" not in worker_command(load_settings())


def test_run_prints_an_ipv6_url_in_brackets(monkeypatch):
    monkeypatch.setenv("BACKPROP_HOST", "::1")
    monkeypatch.setenv("BACKPROP_PORT", "8124")
    started = []

    class Exited:
        pid, returncode = 0, 0

        def __init__(self, command, **_kwargs):
            started.append(command)

        def poll(self):
            return 0

        def wait(self, timeout=None):
            return 0

        def send_signal(self, sig):
            pass

    monkeypatch.setattr(core.cli.subprocess, "Popen", Exited)
    monkeypatch.setattr(core.cli, "_signal_group", lambda *a: None)
    monkeypatch.setattr("alembic.command.upgrade", lambda *a, **k: None)
    monkeypatch.setattr(core.cli.signal, "signal", lambda *a: None)
    result = CliRunner().invoke(main, ["run"])
    assert "backprop API on http://[::1]:8124 " in result.output, result.output
    assert option(started[0], "--bind") == "[::1]:8124" and started[1][:3] == [sys.executable, "-m", "celery"]
