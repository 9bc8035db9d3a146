"""Shared fixtures: an embedded (SQLite + filesystem broker) setup per test, and real
PostgreSQL and Redis when they answer. Under CI=true an unreachable server is an error,
never a skip."""

from __future__ import annotations

import os
import uuid

import pytest

from core.config import Settings

POSTGRES_ADMIN_URL = os.environ.get("BACKPROP_TEST_POSTGRES_URL",
                                    "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BACKPROP_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI") == "true"


def unavailable(what: str, exc: Exception):
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true but unreachable: {exc}")
    pytest.skip(f"{what} unreachable: {exc}")


def migrate(url: str) -> None:
    from alembic import command

    from core.cli import alembic_config

    command.upgrade(alembic_config(url), "head")


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def migrated(settings) -> Settings:
    migrate(settings.database_url)
    return settings


@pytest.fixture
def app(migrated):
    from app import create_app

    application = create_app(migrated)
    yield application
    application.extensions["backprop"]["engine"].dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def sessions(app):
    return app.extensions["backprop"]["sessions"]


@pytest.fixture
def postgres_url():
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    import psycopg

    admin = POSTGRES_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    name = f"backprop_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        unavailable("PostgreSQL", exc)
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_app(migrated, postgres_url):
    """The app on a fresh PostgreSQL database, keys off."""
    import dataclasses

    from app import create_app

    migrate(postgres_url)
    app = create_app(dataclasses.replace(migrated, database_url=postgres_url, auth="off", max_active_jobs=3))
    yield app
    app.extensions["backprop"]["engine"].dispose()


@pytest.fixture
def redis_url():
    """Redis on a dedicated database number, emptied before and after."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.flushdb()
    except redis.exceptions.RedisError as exc:
        unavailable("Redis", exc)
    yield REDIS_URL
    client.flushdb()
    client.close()
