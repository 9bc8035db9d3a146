"""Engine and session factory. SQLite gets WAL and a busy timeout so the API and the workers
can read and write the same file concurrently, and every writing transaction (`sessions.begin()`)
begins IMMEDIATE: SQLite has no SELECT ... FOR UPDATE, so this is what makes a read-then-write
transaction (claiming a job, the attempt fence, registrations) atomic there, as row locks make
it on PostgreSQL. Reading sessions (`sessions()`) begin DEFERRED: in WAL mode a reader then
blocks no one, where an IMMEDIATE one held the write lock for as long as it read (a 4-second
history request stalled the worker's epoch writes and made other requests time out)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

DB_CONNECT_TIMEOUT = 3  # seconds


# A transaction of ours is a few statements long; one left open this long belongs to a process
# that froze inside it (SIGSTOP, a paused VM, swap), and the server ends it: its row locks had
# held every worker's reconciler and the API's cancel of that job for as long as it stayed frozen.
IDLE_IN_TRANSACTION_SECONDS = 60


def make_engine(url: str, lock_timeout: float | None = None, **kwargs) -> Engine:
    """`lock_timeout` (PostgreSQL): seconds a statement waits for a lock before it fails with an
    OperationalError (the API's 503, "try again shortly") rather than holding its thread."""
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
        def _begin(conn):
            conn.exec_driver_sql(f"BEGIN {conn.get_execution_options().get(BEGIN_OPTION, 'IMMEDIATE')}")

        return engine
    if url.startswith("postgresql"):  # a server that accepts and never answers must not hang a request
        options = f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_SECONDS * 1000}"
        if lock_timeout is not None:
            options += f" -c lock_timeout={round(lock_timeout * 1000)}"
        # TCP keepalives and a send timeout: a connection whose packets stop getting through (a
        # network partition) fails within about 30 s instead of leaving a read waiting for good
        # (a worker then ignored a warm shutdown until the network came back). A peer that still
        # acknowledges and never answers (a paused proxy) is not caught by these.
        kwargs.setdefault("connect_args", {"connect_timeout": DB_CONNECT_TIMEOUT, "options": options,
                                           "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                                           "keepalives_count": 3, "tcp_user_timeout": 30_000})
    return create_engine(url, pool_pre_ping=True, **kwargs)


BEGIN_OPTION = "sqlite_begin"  # an execution option read by the SQLite engine's "begin" listener


class Sessions(sessionmaker):
    """`sessions()` for reading, `sessions.begin()` for writing (the convention everywhere):
    on SQLite the first begins DEFERRED, the second IMMEDIATE; on PostgreSQL they are the same."""

    def __init__(self, engine: Engine):
        super().__init__(engine, expire_on_commit=False)
        self.reader = engine.execution_options(**{BEGIN_OPTION: "DEFERRED"})

    def __call__(self, **kw) -> Session:
        kw.setdefault("bind", self.reader)
        return super().__call__(**kw)

    @contextmanager
    def begin(self) -> Iterator[Session]:
        with super().__call__() as session, session.begin():
            yield session


def make_sessionmaker(engine: Engine) -> Sessions:
    return Sessions(engine)
