"""BACKPROP_* settings: a value that cannot be used is named at startup, with what it must be,
by every server command (one line, exit 2), instead of a traceback inside gunicorn or Celery,
or a server that starts and then refuses everything (MAX_REQUEST_BYTES=-1: every POST a 413)."""

from __future__ import annotations

import dataclasses
import re

import pytest
from click.testing import CliRunner

from core.cli import main
from core.config import ConfigError, Settings, load_settings

BAD = [
    ("PORT", "abc", "BACKPROP_PORT must be an integer >= 1 and <= 65535, not 'abc'"),
    ("PORT", "-1", "BACKPROP_PORT must be an integer >= 1"),
    ("WORKER_CONCURRENCY", "abc", "must be an integer >= 1"),
    ("WEB_THREADS", "0", "must be an integer >= 1"),
    ("MAX_REQUEST_BYTES", "-1", "must be an integer >= 1"),
    ("MAX_ACTIVE_JOBS", "-1", "must be an integer >= 1"),
    ("RECONCILE_SECONDS", "0", "must be a number > 0"),
    ("PREDICT_CACHE_MB", "-5", "must be a number >= 0"),
    ("WORKER_METRICS_PORT", "99999", "<= 65535"),
    ("RATE_LIMIT", "garbage", "must read like '1200 per minute'"),
    ("AUTH", "maybe", "must be on, off or auto"),
    ("LOG_LEVEL", "verbose", "BACKPROP_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ("LOG_FORMAT", "xml", "BACKPROP_LOG_FORMAT must be json or text, not 'xml'"),
    # not finite, or beyond what timedelta and threading's waits take (OverflowError tracebacks in
    # gunicorn, a reconciler or heartbeat thread that died without a word)
    ("JOB_TIME_LIMIT", "inf", "BACKPROP_JOB_TIME_LIMIT must be a number > 0 and <= 31536000, not 'inf'"),
    ("JOB_TIME_LIMIT", "1e999", "BACKPROP_JOB_TIME_LIMIT must be a number > 0 and <= 31536000, not '1e999'"),
    ("JOB_TIME_LIMIT", "1e14", "BACKPROP_JOB_TIME_LIMIT must be a number > 0 and <= 31536000"),
    ("RECONCILE_SECONDS", "inf", "BACKPROP_RECONCILE_SECONDS must be a number > 0 and <= 86400"),
    ("HEARTBEAT_SECONDS", "inf", "BACKPROP_HEARTBEAT_SECONDS must be a number > 0 and <= 3600"),
    ("HEARTBEAT_SECONDS", "nan", "BACKPROP_HEARTBEAT_SECONDS must be a number > 0"),
    ("MAX_COMPUTE", "inf", "BACKPROP_MAX_COMPUTE must be a number > 0 and finite, not 'inf'"),
    ("PREDICT_CACHE_MB", "1e999", "BACKPROP_PREDICT_CACHE_MB must be a number >= 0 and finite"),
    ("STALE_AFTER_SECONDS", "1",
     "BACKPROP_STALE_AFTER_SECONDS (1) must be greater than BACKPROP_HEARTBEAT_SECONDS (2)"),
    ("DATABASE_URL", "mysql+nosuchdriver://h/x", "BACKPROP_DATABASE_URL=mysql+nosuchdriver://h/x cannot be used"),
]


@pytest.mark.parametrize("name, value, message", BAD, ids=[f"{n}={v}" for n, v, _ in BAD])
def test_an_unusable_setting_is_named_at_startup(monkeypatch, tmp_path, name, value, message):
    monkeypatch.setenv("BACKPROP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(f"BACKPROP_{name}", value)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings()
    result = CliRunner().invoke(main, ["migrate"])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("rate", ["1200 per minute", "10/second; 1000 per day", "5 per 2 hours", "100/minute"])
def test_rate_limits_as_flask_limiter_reads_them(monkeypatch, rate):
    monkeypatch.setenv("BACKPROP_RATE_LIMIT", rate)
    assert Settings().rate_limit == rate


def test_auth_off_away_from_loopback_stops_every_command(monkeypatch, tmp_path):
    """It was found only when the first request came (a traceback in every gunicorn worker);
    `migrate` even accepted it. A lower-case level is a level."""
    monkeypatch.setenv("BACKPROP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BACKPROP_HOST", "0.0.0.0")
    monkeypatch.setenv("BACKPROP_AUTH", "off")
    result = CliRunner().invoke(main, ["migrate"])
    assert result.exit_code == 2 and "BACKPROP_AUTH=off is only allowed" in result.output, result.output
    monkeypatch.setenv("BACKPROP_AUTH", "on")
    monkeypatch.setenv("BACKPROP_LOG_LEVEL", "debug")
    assert Settings().log_level == "DEBUG"
    assert dataclasses.replace(Settings(), log_level="warning").log_level == "WARNING"  # in code too


def test_passwords_are_redacted_from_urls_in_either_form():
    from core.config import _redact

    assert _redact("postgresql+psycopg://u:PgS3cret@db/x") == "postgresql+psycopg://***@db/x"
    redacted = _redact("postgresql+psycopg:///x?host=db&user=u&password=PgS3cret&sslmode=require")
    assert "PgS3cret" not in redacted and redacted.endswith("password=***&sslmode=require")


@pytest.mark.parametrize("args", [["migrate"], ["keys", "list"], ["keys", "create", "--tenant", "t"]])
def test_commands_name_a_database_that_does_not_answer(monkeypatch, tmp_path, args):
    """`migrate` and `keys` printed a page of traceback when PostgreSQL was down."""
    monkeypatch.setenv("BACKPROP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BACKPROP_DATABASE_URL", "postgresql+psycopg://u:secret@127.0.0.1:1/x")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: the database at postgresql+psycopg://***@127.0.0.1:1/x does not answer")
    assert "Traceback" not in result.output and "secret" not in result.output
