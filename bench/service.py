"""What the service adds to the engine: a digits job submitted through the API (Flask test
client) and run by the worker's `run_job` in this process, against `Trainer.fit` alone on the
same data, spec and seed. The bound is job time <= 1.05 x engine time + 0.5 s."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def service_overhead(epochs: int = 400, repeats: int = 3) -> dict[str, Any]:
    import logging

    from alembic import command
    from sklearn.datasets import load_digits

    from app import create_app
    from core.cli import alembic_config
    from core.config import Settings
    from core.db import Job
    from core.nn import Network, Trainer
    from core.store import dataset_arrays
    from worker.training import run_job

    for name in ("alembic", "app", "backprop", "kombu", "celery"):
        logging.getLogger(name).setLevel(logging.ERROR)
    x, y = load_digits(return_X_y=True)
    body = {"model": {"input_shape": [64], "loss": "categorical_crossentropy",
                      "layers": [{"type": "dense", "units": 128, "activation": "relu"},
                                 {"type": "dense", "units": 64, "activation": "relu"},
                                 {"type": "dense", "units": 10, "activation": "softmax"}]},
            "training": {"optimizer": {"type": "adam", "learning_rate": 1e-3}, "epochs": epochs,
                         "batch_size": 128, "seed": 0},
            "dataset": {"features": (x / 16).round(4).tolist(), "targets": y.tolist()}}
    job_times, engine_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp) / "data")
        settings.data_dir.mkdir(parents=True)
        command.upgrade(alembic_config(settings.database_url), "head")
        app = create_app(settings)
        client, sessions = app.test_client(), app.extensions["backprop"]["sessions"]
        try:
            for _ in range(repeats):
                resp = client.post("/v1/jobs", json=body)
                assert resp.status_code == 202, resp.get_json()
                job_id = resp.get_json()["id"]
                run_job(sessions, job_id, settings=settings)
                with sessions() as s:
                    job = s.get(Job, job_id)
                    assert job.status == "succeeded", (job.status, job.error)
                    job_times.append((job.finished_at - job.started_at).total_seconds())
                    xs, ys = dataset_arrays(job.dataset)
                    spec, training = job.model_spec, job.training_spec
                # the engine alone on the same stored data, spec and seed
                t = time.perf_counter()
                net = Network.from_spec(spec, seed=training["seed"])
                Trainer(net, training).fit(xs, ys)
                engine_times.append(time.perf_counter() - t)
        finally:
            app.extensions["backprop"]["engine"].dispose()
    job_s, engine_s = statistics.median(job_times), statistics.median(engine_times)
    bound = 1.05 * engine_s + 0.5
    return {"workload": f"digits MLP, {epochs} epochs", "job_seconds": round(job_s, 3),
            "engine_seconds": round(engine_s, 3), "ratio": round(job_s / engine_s, 3),
            "bound_seconds": round(bound, 3), "within_bound": job_s <= bound,
            "overhead_ms_per_epoch": round((job_s - engine_s) / epochs * 1e3, 3),
            "job_runs": [round(t, 3) for t in job_times], "engine_runs": [round(t, 3) for t in engine_times]}
