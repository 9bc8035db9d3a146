"""core/store.py against SQLite and PostgreSQL: arrays round-trip bit for bit without pickle,
and epochs with overflowed (infinite) norms are stored as null, which both databases accept."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from core.db import EpochRecord, Job, make_engine, make_sessionmaker
from core.store import add_epochs, create_dataset, dataset_arrays, load_weights, pack, save_weights
from tests.conftest import migrate


@pytest.fixture(params=["sqlite", "postgres"])
def sessions(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}" if request.param == "sqlite" else request.getfixturevalue(
        "postgres_url")
    migrate(url)
    engine = make_engine(url)
    yield make_sessionmaker(engine)
    engine.dispose()


def test_arrays_round_trip_and_epochs_store_non_finite_as_null(sessions):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3, 2)).astype(np.float32)
    y = np.array([0, 1, 2, 1, 0])
    weights = {"dense_0/kernel": rng.normal(size=(4, 3)), "dense_0/bias": np.zeros(3, np.float32)}
    with sessions.begin() as s:
        ds = create_dataset(s, x, y, tenant="t", source="json")
        job = Job(tenant="t", dataset_id=ds.id, model_spec={}, training_spec={}, total_epochs=2)
        s.add(job)
        s.flush()
        save_weights(s, job.id, weights)
        add_epochs(s, job, [
            {"epoch": 1, "loss": 0.5, "duration": 0.1, "accuracy": 0.5,
             "grad_norms": {"dense_0": 1.0}, "weight_norms": {"dense_0": 2.0}},
            {"epoch": 2, "loss": 0.4, "duration": 0.1, "accuracy": float("nan"),
             "grad_norms": {"dense_0": float("inf")}, "weight_norms": {"dense_0": 2.5}},
        ])
    with sessions() as s:
        job = s.scalar(select(Job))
        fx, fy = dataset_arrays(job.dataset)
        assert fx.dtype == np.float32 and np.array_equal(fx, x) and np.array_equal(fy, y)
        stored = load_weights(s, job.id)
        for k, v in weights.items():
            assert stored[k].dtype == v.dtype and np.array_equal(stored[k], v)
        rows = list(s.scalars(select(EpochRecord).order_by(EpochRecord.epoch)))
        assert [r.epoch for r in rows] == [1, 2]
        assert rows[1].grad_norms == {"dense_0": None} and rows[1].metrics["accuracy"] is None
        assert job.epochs_done == 2 and job.metrics["loss"] == 0.4


def test_only_plain_numeric_arrays_are_stored():
    with pytest.raises(ValueError, match="refusing"):
        pack(np.array([{"a": 1}], dtype=object))


def test_epochs_go_to_postgresql_by_copy(postgres_url):
    """An INSERT per epoch (executemany, pipelined) cost 40-85 us an epoch on PostgreSQL, as long
    as a small network's epoch trains; COPY takes about 20. The rows read back the same."""
    from sqlalchemy import event

    migrate(postgres_url)
    engine = make_engine(postgres_url)
    sessions = make_sessionmaker(engine)
    inserts = []
    event.listen(engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *rest: inserts.append(statement) if "INSERT INTO epochs" in statement
                 else None)
    records = [{"epoch": e, "loss": 1 / e, "duration": 0.001, "lr": 0.01, "accuracy": 0.5,
                "grad_norms": {"dense_0": e * 0.1, "dense_1": None}, "weight_norms": {"dense_0": 1.0}}
               for e in range(1, 1201)]
    with sessions.begin() as s:
        ds = create_dataset(s, np.zeros((2, 1)), np.array([0, 1]), tenant="t", source="json")
        job = Job(tenant="t", dataset_id=ds.id, model_spec={}, training_spec={}, total_epochs=1200)
        s.add(job)
        s.flush()
        add_epochs(s, job, records)
    with sessions() as s:
        rows = s.scalars(select(EpochRecord).where(EpochRecord.job_id == job.id).order_by(EpochRecord.epoch)).all()
    engine.dispose()
    assert inserts == []
    assert [r.epoch for r in rows] == list(range(1, 1201)) and rows[9].loss == 0.1
    assert rows[9].metrics == {"lr": 0.01, "accuracy": 0.5} and rows[9].grad_norms == {"dense_0": 1.0, "dense_1": None}
