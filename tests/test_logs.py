"""gunicorn's access lines (core/logs.py JsonAccessLogger), apart from the servers that the
end-to-end tests run with it."""

from __future__ import annotations

import json
import logging

import pytest
from gunicorn import glogging
from gunicorn.config import Config

from core.logs import JsonAccessLogger, configure_logging


def logger_with_an_access_log() -> JsonAccessLogger:
    cfg = Config()
    cfg.set("accesslog", "-")
    return JsonAccessLogger(cfg)


def test_an_access_line_that_cannot_be_made_never_escapes(monkeypatch):
    """gunicorn closes the response after logging it, and the close gives back an event stream's
    slot: an exception here would keep the slot for good. (On gunicorn before 27 the logger had
    no access_log_enabled, and every request raised.)"""
    logger = logger_with_an_access_log()
    monkeypatch.delattr(glogging.Logger, "access_log_enabled", raising=False)  # as before gunicorn 27
    errors = []
    monkeypatch.setattr(logger, "atoms", lambda *a: 1 / 0)
    monkeypatch.setattr(logger, "error", errors.append)
    logger.access(None, None, {}, None)
    assert errors and "ZeroDivisionError" in errors[0]


def test_an_access_line_is_json_whatever_the_url_holds(monkeypatch):
    logger = logger_with_an_access_log()
    lines = []
    monkeypatch.setattr(logger, "access_log", logging.getLogger("test.access"))
    monkeypatch.setattr(logger.access_log, "info", lines.append)
    atoms = {"r": 'GET /v1/jobs/0123456789abcdef0123456789abcdef/events?a=\\\\"x HTTP/1.1',
             "U": "/v1/jobs/0123456789abcdef0123456789abcdef/events", "s": "200", "M": "3", "h": "127.0.0.1",
             "{x-request-id}o": "r1"}
    monkeypatch.setattr(logger, "atoms", lambda *a: atoms)
    logger.access(None, None, {}, None)
    entry = json.loads(lines[0])
    assert entry["message"] == atoms["r"] and entry["job_id"] == "0123456789abcdef0123456789abcdef"
    assert entry["request_id"] == "r1" and entry["status"] == "200" and entry["logger"] == "gunicorn.access"


# --- gunicorn's own lines and the level: BACKPROP_LOG_FORMAT and BACKPROP_LOG_LEVEL ---------

ATOMS = {"r": "GET /livez HTTP/1.1", "U": "/livez", "s": "200", "M": "1", "h": "127.0.0.1", "{x-request-id}o": "r1",
         "l": "-", "u": "-", "t": "[28/Nov/2026:10:00:00 +0000]", "b": "16", "f": "-", "a": "curl"}


def gunicorn_logger(monkeypatch, level: str = "info", fmt: str | None = None) -> JsonAccessLogger:
    if fmt is None:
        monkeypatch.delenv("BACKPROP_LOG_FORMAT", raising=False)
    else:
        monkeypatch.setenv("BACKPROP_LOG_FORMAT", fmt)
    cfg = Config()
    cfg.set("accesslog", "-")
    cfg.set("loglevel", level)
    logger = JsonAccessLogger(cfg)  # its handlers take sys.stdout and sys.stderr as capsys set them
    monkeypatch.setattr(logger, "atoms", lambda *a: ATOMS)
    return logger


def test_gunicorns_own_lines_are_json_by_default(monkeypatch, capsys):
    """"Starting gunicorn", "Worker failed to boot" and a worker's traceback were plain text."""
    logger = gunicorn_logger(monkeypatch)
    logger.info("Starting gunicorn %s", "27.0.1")
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        logger.exception("Exception in worker process")
    logger.access(None, None, {}, None)
    err, out = capsys.readouterr().err.splitlines(), capsys.readouterr().out
    entries = [json.loads(line) for line in err]  # every line one JSON object
    assert entries[0]["message"] == "Starting gunicorn 27.0.1" and entries[0]["logger"] == "gunicorn.error"
    assert entries[0]["level"] == "INFO" and entries[1]["level"] == "ERROR"
    assert "ZeroDivisionError" in entries[1]["exception"] and len(entries) == 2
    logger.access(None, None, {}, None)
    assert json.loads(capsys.readouterr().out)["message"] == "GET /livez HTTP/1.1"
    assert out == ""  # (the first access line went to the capture read before it)


def test_gunicorn_follows_the_text_format(monkeypatch, capsys):
    logger = gunicorn_logger(monkeypatch, fmt="text")
    logger.info("Starting gunicorn %s", "27.0.1")
    logger.access(None, None, {}, None)
    captured = capsys.readouterr()
    assert captured.err.strip().endswith("INFO gunicorn.error: Starting gunicorn 27.0.1")
    assert captured.out.startswith('127.0.0.1 - - [28/Nov/2026:10:00:00 +0000] "GET /livez HTTP/1.1" 200 16')


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_above_info_there_are_no_access_lines_and_no_info_lines(monkeypatch, capsys, fmt):
    """BACKPROP_LOG_LEVEL=ERROR still gave INFO access lines and gunicorn's INFO lines."""
    logger = gunicorn_logger(monkeypatch, level="error", fmt=fmt)
    logger.info("Starting gunicorn")
    logger.warning("a warning")
    logger.access(None, None, {}, None)
    logger.error("Worker failed to boot.")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Starting" not in captured.err and "a warning" not in captured.err
    assert "Worker failed to boot." in captured.err
    logger = gunicorn_logger(monkeypatch, level="debug", fmt=fmt)
    logger.access(None, None, {}, None)
    assert "GET /livez" in capsys.readouterr().out  # at DEBUG and INFO they are there


# --- the root logger: Celery's pool, warnings, flask-limiter --------------------------------

@pytest.fixture
def restore_logging():
    names = ("", "multiprocessing", "flask-limiter", "py.warnings")
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level, logging.getLogger(n).filters[:])
             for n in names}
    yield
    logging.captureWarnings(False)
    for n, (handlers, level, filters) in saved.items():
        logger = logging.getLogger(n)
        logger.handlers[:], logger.filters[:] = handlers, filters
        logger.setLevel(level)


def test_the_pool_and_warnings_log_json_lines(restore_logging, capsys):
    """billiard's "Process 'ForkPoolWorker-1' pid:12 exited with 'signal 9 (SIGKILL)'" goes to
    the "multiprocessing" logger, which does not propagate: it came out bare."""
    import warnings

    from billiard import util

    configure_logging("INFO", "json")
    util.get_logger().error("Process %r pid:%r exited with %r", "ForkPoolWorker-1", 12, "signal 9 (SIGKILL)")
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # not the test run's "error"
        warnings.warn("running as root", stacklevel=1)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["logger"] == "multiprocessing" and "exited with 'signal 9 (SIGKILL)'" in lines[0]["message"]
    assert lines[1]["logger"] == "py.warnings" and "running as root" in lines[1]["message"]
    assert len(lines) == 2


def test_flask_limiter_failures_are_one_warning_line(restore_logging, capsys):
    """While Redis is silent every request logged "Failed to rate limit. Swallowing error" at
    ERROR with a full traceback."""
    configure_logging("INFO", "json")
    try:
        raise ConnectionError("Timeout reading from 127.0.0.1:6379\nmore")
    except ConnectionError:
        logging.getLogger("flask-limiter").exception("Failed to rate limit. Swallowing error")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["level"] == "WARNING" and "exception" not in entry
    assert entry["message"] == ("Failed to rate limit. Swallowing error: ConnectionError: "
                                "Timeout reading from 127.0.0.1:6379")
    configure_logging("WARNING", "json")  # configured again: still one filter, one line
    logging.getLogger("flask-limiter").error("Failed to rate limit. Swallowing error")
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_celerys_shutdown_notices_are_json_lines():
    """Celery prints "worker: Warm shutdown (MainProcess)" from its signal handler; in JSON mode
    the worker replaces that printer with core.logs.say."""
    import os

    from core.logs import say

    r, w = os.pipe()
    with os.fdopen(w, "w") as f:
        say("worker: Warm shutdown (MainProcess)", f)
    with os.fdopen(r) as f:
        entry = json.loads(f.read())
    assert entry["message"] == "worker: Warm shutdown (MainProcess)" and entry["logger"] == "celery.apps.worker"
