"""Migrations: one head, they build an empty database, and they agree with the models
(Redash's test_migrations, and what `alembic check` does)."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from core.cli import alembic_config
from core.db import Base, make_engine
from tests.conftest import migrate


def test_single_head():
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1, heads


def _assert_matches_models(url: str) -> None:
    migrate(url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            # server defaults too: 0002 left some that the models do not declare
            diff = compare_metadata(MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}), Base.metadata)
            assert diff == [], diff
            tables = set(inspect(conn).get_table_names())
        assert tables >= set(Base.metadata.tables)
    finally:
        engine.dispose()


def test_upgrade_head_on_empty_sqlite_matches_models(tmp_path):
    _assert_matches_models(f"sqlite:///{tmp_path / 'empty.db'}")


def test_upgrade_head_on_empty_postgres_matches_models(postgres_url):
    _assert_matches_models(postgres_url)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_downgrade_to_base_and_back(tmp_path, backend):
    from alembic import command

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    cfg = alembic_config(url)
    command.upgrade(cfg, "head")
    command.downgrade(cfg, "base")
    engine = make_engine(url)
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    command.upgrade(cfg, "head")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_upgrading_a_filled_database_keeps_every_row(tmp_path, backend, request):
    """On SQLite, batch mode rebuilds a table by dropping it; with the engine's foreign keys on,
    dropping `jobs` cascaded to every job's epochs and weights. An embedded user's whole
    training history went with the 0001 -> 0002 upgrade."""
    import datetime

    from alembic import command
    from sqlalchemy import (
        Boolean,
        DateTime,
        Float,
        Integer,
        LargeBinary,
        MetaData,
        Numeric,
        String,
        func,
        insert,
        select,
    )

    url = f"sqlite:///{tmp_path / 'db.sqlite'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    cfg = alembic_config(url)
    command.upgrade(cfg, "0001")
    engine = make_engine(url)
    meta = MetaData()
    meta.reflect(engine)

    def row(table, **given):  # every NOT NULL column gets a value of its type
        values = dict(given)
        for col in table.columns:
            if col.name in values or col.nullable or col.server_default is not None:
                continue
            t = col.type
            values[col.name] = (0 if isinstance(t, Integer) else 0.5 if isinstance(t, Float | Numeric)
                                else False if isinstance(t, Boolean)
                                else datetime.datetime(2026, 1, 1) if isinstance(t, DateTime)
                                else b"" if isinstance(t, LargeBinary)
                                else "x" if isinstance(t, String) else [] if "JSON" in str(t) else "x")
        return values

    tables = meta.tables
    with engine.begin() as conn:
        conn.execute(insert(tables["datasets"]), row(tables["datasets"], id="d1", feature_shape=[1],
                                                    target_shape=[]))
        conn.execute(insert(tables["jobs"]), row(tables["jobs"], id="j1", dataset_id="d1", model_spec={},
                                                training_spec={}))
        conn.execute(insert(tables["epochs"]), row(tables["epochs"], job_id="j1", epoch=1, metrics={},
                                                  grad_norms={}, weight_norms={}))
        conn.execute(insert(tables["weights"]), row(tables["weights"], job_id="j1", name="w", shape=[1]))
        conn.execute(insert(tables["jobs"]), row(tables["jobs"], id="j2", dataset_id="d1", model_spec={},
                                                training_spec={}))
    engine.dispose()
    command.upgrade(cfg, "0003")
    engine = make_engine(url)
    with engine.begin() as conn:  # j2 fine-tuned from j1 (init_from came with 0002)
        conn.exec_driver_sql("UPDATE jobs SET init_from = 'j1' WHERE id = 'j2'")
    engine.dispose()
    command.upgrade(cfg, "0004")
    engine = make_engine(url)
    with engine.begin() as conn:  # j1 stopped early and kept epoch 1's weights and metrics; j2 ran 3 epochs
        conn.execute(insert(tables["epochs"]), row(tables["epochs"], id=2, job_id="j1", epoch=2, loss=0.25, metrics={},
                                                  grad_norms={}, weight_norms={}))
        conn.exec_driver_sql("""UPDATE jobs SET epochs_done = 2, stop_reason = 'early_stopping',
                                metrics = '{"loss": 0.5}' WHERE id = 'j1'""")
        conn.exec_driver_sql("""UPDATE jobs SET epochs_done = 3, metrics = '{"loss": 0.1}' WHERE id = 'j2'""")
    engine.dispose()
    command.upgrade(cfg, "0006")
    engine = make_engine(url)
    checkpoint = ("INSERT INTO checkpoints (job_id, epoch, attempt, created_at, data) "
                  "VALUES ('j2', {}, {}, '2026-01-01', '')")
    with engine.begin() as conn:  # j2 is running: a checkpoint at epoch 2
        conn.exec_driver_sql(checkpoint.format(2, 1))
    engine.dispose()
    command.upgrade(cfg, "head")
    engine = make_engine(url)
    with engine.connect() as conn:
        counts = {name: conn.scalar(select(func.count()).select_from(tables[name]))
                  for name in ("datasets", "jobs", "epochs", "weights")}
        counts["checkpoints"] = conn.exec_driver_sql("SELECT count(*) FROM checkpoints").scalar()
        jobs = MetaData()
        jobs.reflect(conn, only=["jobs"])
        t = jobs.tables["jobs"]
        lineage = dict(conn.execute(select(t.c.id, t.c.fine_tuned_from)).all())
        metrics_epoch = dict(conn.execute(select(t.c.id, t.c.metrics_epoch)).all())
    engine.dispose()
    assert counts == {"datasets": 1, "jobs": 2, "epochs": 2, "weights": 1, "checkpoints": 1}
    assert lineage == {"j1": None, "j2": "j1"}  # 0004 keeps the parent of a fine-tune
    assert metrics_epoch == {"j1": 1, "j2": 3}  # 0005: the epoch the metrics come from


    # 0007 keys checkpoints by attempt and epoch; going back to one per job keeps the latest
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(checkpoint.format(3, 2))
        conn.exec_driver_sql(checkpoint.format(3, 1))
    engine.dispose()
    command.downgrade(cfg, "0006")
    engine = make_engine(url)
    with engine.connect() as conn:
        kept = conn.exec_driver_sql("SELECT job_id, epoch, attempt FROM checkpoints").all()
    engine.dispose()
    assert [tuple(r) for r in kept] == [("j2", 3, 2)]
    command.upgrade(cfg, "head")
