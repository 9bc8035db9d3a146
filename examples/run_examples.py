"""Runs every example in examples/specs through the service and measures it on held-out data:
upload the training part as a dataset, train, predict the test part, compare.

    python examples/run_examples.py                    # starts its own embedded server
    python examples/run_examples.py --url http://127.0.0.1:8000 [--api-key KEY]

Writes examples/results/results.md (the table the README shows), results.json, and a
loss-curve picture (loss_curve.png, when matplotlib is installed: pip install -e '.[examples]')."""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from core.client import Client, TransportError

HERE = Path(__file__).resolve().parent


def load_test(spec: dict) -> tuple[list, np.ndarray]:
    path = HERE / spec["data"]["test"]
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            return npz["features"].tolist(), npz["targets"]
    with path.open() as f:
        rows = list(csv.DictReader(f))
    target = spec["data"]["target"]
    x = [[float(v) for k, v in row.items() if k != target] for row in rows]
    y = np.array([row[target] for row in rows])
    return x, (y.astype(float) if spec["data"].get("task") == "regression" else y)


def score(spec: dict, predictions: list, truth: np.ndarray) -> tuple[str, float]:
    pred = np.array(predictions)
    if spec["data"].get("task") == "regression":
        pred = pred.astype(float).reshape(-1)
        r2 = 1 - np.sum((truth - pred) ** 2) / np.sum((truth - truth.mean()) ** 2)
        return "R²", float(r2)
    return "accuracy", float(np.mean(pred.astype(str) == truth.astype(str)))


def run_one(client: Client, name: str, spec: dict, quick: bool) -> dict:
    data = spec["data"]
    dataset = client.upload_dataset(HERE / data["train"], target=data.get("target"), name=name,
                                    task=data.get("task"))
    training = dict(spec["training"])
    if quick:
        training["epochs"] = min(training["epochs"], 3)
    job = client.submit_job({"model": spec["model"], "training": training}, dataset_id=dataset.id)
    job = client.wait(job.id, timeout=1800)
    # the server's own times, from submit to success (queueing included), not the client's polls
    elapsed = (datetime.fromisoformat(job.finished_at) - datetime.fromisoformat(job.created_at)).total_seconds()
    if job.status != "succeeded":
        raise RuntimeError(f"{name}: job {job.id} {job.status}: {job.error}")
    x, y = load_test(spec)
    metric, value = score(spec, client.predict(job.id, x).predictions, y)
    epochs = client.epochs(job.id)
    return {"example": name, "description": spec["description"], "job_id": job.id, "metric": metric,
            "value": value, "epochs": job.epoch,
            "stop_reason": job.stop_reason, "seconds": round(elapsed, 2), "train_rows": dataset.n_samples,
            "test_rows": len(x), "loss": [e.loss for e in epochs],
            "val_loss": [e.metrics.get("val_loss") for e in epochs]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedServer:
    """`backprop run` in a temporary data directory, for when no --url is given."""

    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="backprop-examples-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "BACKPROP_DATA_DIR": self.tmp.name, "BACKPROP_PORT": str(self.port),
               "BACKPROP_LOG_LEVEL": "WARNING"}
        exe = Path(sys.executable).with_name("backprop")
        self.log = open(Path(self.tmp.name) / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([str(exe), "run"], env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, client: Client, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                next(iter(client.list_datasets()), None)
                return
            except TransportError:
                time.sleep(0.3)
        raise RuntimeError("the embedded server did not start")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()
        self.tmp.cleanup()


def write_results(results: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    lines = ["| example | held-out | epochs | stopped by | train / test rows | seconds |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['example']}: {r['description']} | {r['metric']} {r['value']:.3f} | {r['epochs']} | "
                     f"{r['stop_reason']} | {r['train_rows']} / {r['test_rows']} | {r['seconds']} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no loss-curve picture (pip install -e '.[examples]')")
        return
    r = next((r for r in results if r["example"] == "digits_cnn"), results[0])
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    epochs = range(1, len(r["loss"]) + 1)
    ax.plot(epochs, r["loss"], label="training loss")
    if any(v is not None for v in r["val_loss"]):
        ax.plot(epochs, r["val_loss"], label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    ax.set_yscale("log")
    ax.set_title(f"{r['example']}: {r['description']}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss_curve.png")
    print(f"wrote {out / 'loss_curve.png'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="a running server; by default an embedded one is started")
    parser.add_argument("--api-key", default=os.environ.get("BACKPROP_API_KEY"))
    parser.add_argument("--quick", action="store_true", help="three epochs each: checks that they run")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("names", nargs="*", help="examples to run (default: all)")
    args = parser.parse_args(argv)
    server = None if args.url else EmbeddedServer()
    client = Client(args.url or server.url, api_key=args.api_key)
    try:
        if server:
            server.wait_ready(client)
        results = []
        for path in sorted((HERE / "specs").glob("*.json")):
            if args.names and path.stem not in args.names:
                continue
            print(f"running {path.stem} ...", flush=True)
            results.append(run_one(client, path.stem, json.loads(path.read_text()), args.quick))
        write_results(results, args.out)
    finally:
        if server:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
