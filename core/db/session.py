"""Engine and session factory. SQLite gets WAL and a busy timeout so the API and the workers
can read and write the same file concurrently, and every transaction begins IMMEDIATE: SQLite
has no SELECT ... FOR UPDATE, so this is what makes a read-then-write transaction (claiming a
job, the attempt fence, registrations) atomic there, as row locks make it on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

DB_CONNECT_TIMEOUT = 3  # seconds


def make_engine(url: str, **kwargs) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 15}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # the driver must not issue its own deferred BEGIN
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=15000")  # below the stale-heartbeat threshold (30 s)
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql"):  # a server that accepts and never answers must not hang a request
        kwargs.setdefault("connect_args", {"connect_timeout": DB_CONNECT_TIMEOUT})
    return create_engine(url, pool_pre_ping=True, **kwargs)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
