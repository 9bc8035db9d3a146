"""How the service uses a machine: the worker runs one training process per core, each with
one BLAS thread (BACKPROP_WORKER_CONCURRENCY = cores, BACKPROP_BLAS_THREADS = 1). Here every
core trains the engine on the same workload at the same time, and the figure is the sum of their
samples/s: the machine's training throughput, to set beside one process that uses every core
through BLAS threads."""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
from typing import Any


def _child(name: str, quick: bool, rounds: int, barrier, results) -> None:
    from threadpoolctl import threadpool_limits

    from . import workloads as W

    with threadpool_limits(limits=1):
        runner = W.EngineRunner(W.make(name, quick))
        runner.epoch()  # warm-up, before the others start timing
        barrier.wait()
        rates = []
        for _ in range(rounds):
            t = time.perf_counter()
            n = runner.epoch()
            rates.append(n / (time.perf_counter() - t))
    results.put(statistics.median(rates))


def one_job_per_core(names: list[str], processes: int, quick: bool, rounds: int = 5) -> dict[str, Any]:
    ctx = mp.get_context("spawn")  # a fresh interpreter per process, as the worker's pool has
    out: dict[str, Any] = {}
    for name in names:
        barrier, results = ctx.Barrier(processes), ctx.Queue()
        procs = [ctx.Process(target=_child, args=(name, quick, rounds, barrier, results)) for _ in range(processes)]
        for p in procs:
            p.start()
        rates = [results.get(timeout=600) for _ in procs]
        for p in procs:
            p.join()
        out[name] = {"processes": processes, "samples_per_s": round(sum(rates), 1),
                     "per_process": [round(r, 1) for r in rates]}
    return out
