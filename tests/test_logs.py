"""gunicorn's access lines (core/logs.py JsonAccessLogger), apart from the servers that the
end-to-end tests run with it."""

from __future__ import annotations

import json
import logging

from gunicorn import glogging
from gunicorn.config import Config

from core.logs import JsonAccessLogger


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
