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
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                    Base.metadata)
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
