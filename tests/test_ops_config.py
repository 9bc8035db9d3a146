"""Settings that each server command must refuse at startup, or read as a deployment writes
them: durations that overflow, relations between settings, database URLs, IPv6 hosts."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from core.cli import main
from core.config import ConfigError, Settings, host_port, load_settings


@pytest.fixture(autouse=True)
def data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("BACKPROP_DATA_DIR", str(tmp_path))


@pytest.mark.parametrize("name, high", [("JOB_TIME_LIMIT", 365 * 86400), ("HEARTBEAT_SECONDS", 3600),
                                        ("RECONCILE_SECONDS", 86400), ("REQUEUE_AFTER_SECONDS", 7 * 86400),
                                        ("CHECKPOINT_SECONDS", 86400), ("BROKER_POLL_SECONDS", 60),
                                        ("IDEMPOTENCY_HOURS", 87600)])
def test_durations_have_an_upper_bound_that_the_servers_can_take(monkeypatch, name, high):
    monkeypatch.setenv("BACKPROP_STALE_AFTER_SECONDS", str(7 * 86400))  # above any heartbeat allowed
    monkeypatch.setenv(f"BACKPROP_{name}", str(high))
    assert getattr(load_settings(), name.lower()) == high
    for bad in (str(high * 1.01), "inf", "-inf", "nan", "1e999"):
        monkeypatch.setenv(f"BACKPROP_{name}", bad)
        with pytest.raises(ConfigError, match=f"BACKPROP_{name} must be a number .* and <= {high}, not"):
            load_settings()


def test_the_largest_allowed_values_work_where_they_are_used(monkeypatch):
    """What each bound protects: timedelta and datetime arithmetic, Celery's integer visibility
    timeout, and threading's waits (TIMEOUT_MAX)."""
    import threading
    from datetime import timedelta

    from core.db.models import utcnow
    from core.queue import make_celery

    for name, value in [("JOB_TIME_LIMIT", "31536000"), ("HEARTBEAT_SECONDS", "3600"),
                        ("STALE_AFTER_SECONDS", "604800"), ("RECONCILE_SECONDS", "86400"),
                        ("REQUEUE_AFTER_SECONDS", "604800"), ("IDEMPOTENCY_HOURS", "87600")]:
        monkeypatch.setenv(f"BACKPROP_{name}", value)
    s = load_settings()
    assert utcnow() + timedelta(seconds=s.job_time_limit) > utcnow() - timedelta(hours=s.idempotency_hours)
    now = utcnow()
    assert now - 10 * timedelta(seconds=s.requeue_after_seconds) < now - timedelta(seconds=s.stale_after_seconds)
    assert max(s.heartbeat_seconds, s.reconcile_seconds) < threading.TIMEOUT_MAX
    conf = make_celery(dataclasses.replace(s, broker_url="redis://127.0.0.1:6379/9")).conf
    assert conf.broker_transport_options["visibility_timeout"] > s.job_time_limit


@pytest.mark.parametrize("heartbeat, stale", [("2", "1"), ("2", "2"), ("10", "5")])
def test_stale_after_must_exceed_the_heartbeat(monkeypatch, heartbeat, stale):
    """With STALE_AFTER=1 and the heartbeat at 2 a healthy job was failed "worker lost" three
    times over; every server command now refuses the pair, naming both."""
    monkeypatch.setenv("BACKPROP_HEARTBEAT_SECONDS", heartbeat)
    monkeypatch.setenv("BACKPROP_STALE_AFTER_SECONDS", stale)
    result = CliRunner().invoke(main, ["migrate"])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and "BACKPROP_STALE_AFTER_SECONDS" in line and "BACKPROP_HEARTBEAT_SECONDS" in line
    monkeypatch.setenv("BACKPROP_STALE_AFTER_SECONDS", str(float(heartbeat) + 0.5))
    assert load_settings().stale_after_seconds > load_settings().heartbeat_seconds


@pytest.mark.parametrize("url", ["postgres://u:pw@db.example:5432/x", "postgresql://u:pw@db.example/x",
                                 "POSTGRES://u:pw@db.example/x"])
def test_postgres_urls_use_the_installed_driver(monkeypatch, url):
    """Heroku-style postgres:// gave NoSuchModuleError tracebacks in every process."""
    monkeypatch.setenv("BACKPROP_DATABASE_URL", url)
    s = load_settings()
    assert s.database_url == "postgresql+psycopg://" + url.split("://", 1)[1]
    from sqlalchemy import create_engine

    engine = create_engine(s.database_url)  # loads without connecting
    assert engine.dialect.driver == "psycopg"
    engine.dispose()
    assert Settings(database_url=url).database_url.startswith("postgresql+psycopg://")  # given in code too


@pytest.mark.parametrize("url", ["nonsense", "postgres+nosuchdriver://u:pw@h/x", "oracle+nosuch://h/x",
                                 "mysql://u:secret@h/x", "nosuchdialect://h/x"])
def test_a_database_url_sqlalchemy_cannot_load_is_refused_at_startup(monkeypatch, url):
    monkeypatch.setenv("BACKPROP_DATABASE_URL", url)
    result = CliRunner().invoke(main, ["migrate"])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert line.startswith("error: BACKPROP_DATABASE_URL=") and "cannot be used" in line and "\n" not in line
    assert "Traceback" not in result.output and "secret" not in result.output


def test_sqlite_urls_are_kept(tmp_path):
    assert Settings(data_dir=tmp_path).database_url == f"sqlite:///{tmp_path / 'backprop.db'}"
    assert Settings(database_url="sqlite://").database_url == "sqlite://"


@pytest.mark.parametrize("host, address", [("127.0.0.1", "127.0.0.1:8000"), ("::1", "[::1]:8000"),
                                           ("[::1]", "[::1]:8000"), ("::", "[::]:8000"),
                                           ("localhost", "localhost:8000"), ("0.0.0.0", "0.0.0.0:8000")])
def test_ipv6_hosts_are_bracketed_where_a_port_follows(monkeypatch, host, address):
    monkeypatch.setenv("BACKPROP_HOST", host)
    s = load_settings()
    assert s.address == address and host_port(s.host, 8000) == address
    assert s.host == host.strip("[]")
    if host in ("::1", "[::1]"):
        assert s.loopback  # a bracketed loopback is still loopback (BACKPROP_AUTH=auto stays off)
