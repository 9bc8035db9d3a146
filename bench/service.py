"""What the service adds to the engine: a digits job submitted through the API (Flask test
client) and run by the worker's `run_job` in this process, against `Trainer.fit` alone on the
same data, spec and seed. The bound is job time <= 1.05 x engine time + 0.5 s.

Job and engine runs alternate, after one short warm-up job (first-use costs: imports, SQL
compilation); medians are reported. CPU seconds are reported too: on a busy machine the wall
time of the job, which also waits for SQLite and the heartbeat thread, is the noisier figure."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def service_overhead(epochs: int = 300, repeats: int = 5) -> dict[str, Any]:
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
    job_times, engine_times, job_cpu, engine_cpu = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp) / "data")
        settings.data_dir.mkdir(parents=True)
        command.upgrade(alembic_config(settings.database_url), "head")
        app = create_app(settings)
        client, sessions = app.test_client(), app.extensions["backprop"]["sessions"]
        try:
            for i in range(repeats + 1):  # the first is a short warm-up job, not timed
                req = {**body, "training": {**body["training"], "epochs": epochs if i else 3}}
                resp = client.post("/v1/jobs", json=req)
                assert resp.status_code == 202, resp.get_json()
                job_id = resp.get_json()["id"]
                c = time.process_time()
                run_job(sessions, job_id, settings=settings)
                c = time.process_time() - c
                if not i:
                    continue
                job_cpu.append(c)
                with sessions() as s:
                    job = s.get(Job, job_id)
                    assert job.status == "succeeded", (job.status, job.error)
                    job_times.append((job.finished_at - job.started_at).total_seconds())
                    xs, ys = dataset_arrays(job.dataset)
                    spec, training = job.model_spec, job.training_spec
                # the engine alone on the same stored data, spec and seed
                t, c = time.perf_counter(), time.process_time()
                net = Network.from_spec(spec, seed=training["seed"])
                Trainer(net, training).fit(xs, ys)
                engine_times.append(time.perf_counter() - t)
                engine_cpu.append(time.process_time() - c)
        finally:
            app.extensions["backprop"]["engine"].dispose()
    job_s, engine_s = statistics.median(job_times), statistics.median(engine_times)
    bound = 1.05 * engine_s + 0.5
    return {"workload": f"digits MLP, {epochs} epochs", "job_seconds": round(job_s, 3),
            "engine_seconds": round(engine_s, 3), "ratio": round(job_s / engine_s, 3),
            "bound_seconds": round(bound, 3), "within_bound": job_s <= bound,
            "overhead_ms_per_epoch": round((job_s - engine_s) / epochs * 1e3, 3),
            "job_cpu_seconds": round(statistics.median(job_cpu), 3),
            "engine_cpu_seconds": round(statistics.median(engine_cpu), 3),
            "job_runs": [round(t, 3) for t in job_times], "engine_runs": [round(t, 3) for t in engine_times]}
