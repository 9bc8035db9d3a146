"""SQLite sessions: a reading session (`sessions()`) must not hold the write lock, a writing one
(`sessions.begin()`) must. Every transaction used to begin IMMEDIATE: a 4-second history
request held the lock for 4 seconds, stalled the worker's epoch writes and made other requests
time out with 503s."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import select

from core.db import Job, make_engine, make_sessionmaker
from tests.conftest import migrate


@pytest.fixture
def sqlite_file(tmp_path):
    path = tmp_path / "db.sqlite"
    migrate(f"sqlite:///{path}")
    engine = make_engine(f"sqlite:///{path}")
    yield path, make_sessionmaker(engine)
    engine.dispose()


def other_writer_can_begin(path) -> bool:
    conn = sqlite3.connect(str(path), timeout=0.3, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("COMMIT")
        return True
    except sqlite3.OperationalError:  # database is locked
        return False
    finally:
        conn.close()


def test_a_reading_session_leaves_the_write_lock_free(sqlite_file):
    path, sessions = sqlite_file
    with sessions() as session:
        session.execute(select(Job.id)).all()  # the transaction is open, and has read
        assert other_writer_can_begin(path)


def test_a_writing_session_holds_the_write_lock_from_its_start(sqlite_file):
    path, sessions = sqlite_file
    with sessions.begin() as session:
        session.execute(select(Job.id)).all()  # read-then-write: no other writer in between
        assert not other_writer_can_begin(path)
    assert other_writer_can_begin(path)
