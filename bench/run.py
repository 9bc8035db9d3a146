"""`make bench` / `python -m bench.run`: the engine against scikit-learn and PyTorch (when installed)
on the same work, in one process; a table, then one JSON object on the last line.

Timing: systems are interleaved round by round (one epoch -- or a group of tiny epochs -- of
each system per round, in a random order, with a short pause between systems), so that a
noisy neighbour on a shared machine slows every system alike; the first round is warm-up and is
dropped. Each samples/s figure is the median over the remaining rounds; each ratio is the
median over rounds of the two systems' ratio within the round (see paired_ratio). All systems
use the same number of BLAS / intra-op threads, set with threadpoolctl and
torch.set_num_threads; the whole comparison runs once per thread count (--threads, default 1 --
the worker's BACKPROP_BLAS_THREADS -- and every core). glibc's malloc thresholds are pinned
(see fix_malloc_thresholds), so that no system's speed depends on what allocated and freed
before it in the process.

Besides scikit-learn and PyTorch, the MLP workloads run a hand-written plain-NumPy loop (see
workloads.NumpyReferenceRunner): the ceiling for NumPy on that work.

Options: --threads 1,2, --rounds N, --quick (small sizes, a smoke run), --only mlp,digits,...,
--no-torch, --no-service, --no-memory, --no-parallel, --default-malloc.

Last, with one process per core (one BLAS thread each, the worker's default), the engine's
summed samples/s: how the service itself uses a machine (see parallel.py)."""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from typing import Any

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from . import workloads as W

BARS = {  # the targets of issue 4, as ratios (higher is better unless named *_max)
    "mlp": {"sklearn": 1.5, "torch": 1.2},
    "digits": {"sklearn": 2.0, "torch": 2.0},
    "conv": {"torch": 0.7},
    "lstm": {"torch": 0.7},
    "mlp_fraction_of_peak": 0.60,
    "float64_over_float32_time_max": 2.2,
}


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


PAUSE = 0.05  # seconds between two timed runs, for the previous system's threads to go idle


def measure(runners: list, rounds: int, warmup: int = 1) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """samples per wall-clock second and per CPU second (all threads of this process) of each
    runner per round, interleaved, warm-up rounds dropped. CPU time does not count time spent
    descheduled, so on a busy machine it is the steadier of the two.

    Each round runs the systems in a fresh (seeded) random order, after a short pause: a system
    can leave threads spinning for a while after it returns (OpenMP's and OpenBLAS's workers
    busy-wait for the next parallel region), which slows whatever runs next. Rotating a fixed
    order would always put the same system after the same other one."""
    wall: dict[str, list[float]] = {r.system: [] for r in runners}
    cpu: dict[str, list[float]] = {r.system: [] for r in runners}
    rng = np.random.default_rng(0)
    for i in range(warmup + rounds):
        for j in rng.permutation(len(runners)):
            r = runners[j]
            time.sleep(PAUSE)
            t, c = time.perf_counter(), time.process_time()
            n = r.epoch()
            dt, dc = time.perf_counter() - t, time.process_time() - c
            if i >= warmup:
                wall[r.system].append(n / dt)
                cpu[r.system].append(n / dc)
    return wall, cpu


def paired_ratio(a: list[float], b: list[float]) -> float:
    """The median over rounds of a[i] / b[i]. Two systems' runs in one round are a second or two
    apart, so a slow spell of the host that covers the round slows both and cancels out of
    their ratio; the ratio of the two medians can pair a fast round of one with a slow round of
    the other (seen on a host whose 2-thread rounds swung 2x within a run)."""
    return round(statistics.median(x / y for x, y in zip(a, b, strict=True)), 3)


def matmul_peak(sizes=(1024, 2048), reps: int = 7) -> dict[str, float]:
    """float32 GEMM GFLOP/s of square products, by size: the fastest of `reps` (a peak is what
    the machine can do; noise only ever slows a product down)."""
    per_size = {}
    rng = np.random.default_rng(0)
    for n in sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        c = np.empty((n, n), np.float32)
        np.matmul(a, b, out=c)
        best = math.inf
        for _ in range(reps):
            t = time.perf_counter()
            np.matmul(a, b, out=c)
            best = min(best, time.perf_counter() - t)
        per_size[n] = 2 * n**3 / best / 1e9
    return per_size


def fix_malloc_thresholds() -> dict[str, Any]:
    """Pin glibc's mmap and trim thresholds (32 MB, 64 MB). By default glibc serves large blocks
    with mmap and raises that threshold only after freeing one, so a system that allocates big
    temporaries every batch (scikit-learn's Adam) pays ~100k page faults per epoch or none,
    depending on what ran before it in the process. Pinned, every system gets the fast case."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, 32 << 20) == 1 and libc.mallopt(-1, 64 << 20) == 1  # M_MMAP_/M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        ok = False
    return {"mmap_threshold_mb": 32, "trim_threshold_mb": 64} if ok else {"pinned": False}


def blas_summary() -> list[dict[str, Any]]:
    keep = ("internal_api", "num_threads", "architecture", "version", "threading_layer")
    return [{k: i.get(k) for k in keep} for i in threadpool_info()]


# -- peak memory: workload 1 on the engine alone, in a fresh process ----------------------------

def memory_child(epochs: int, quick: bool) -> None:
    """Runs in a subprocess that imports only NumPy and the engine; prints one JSON line."""
    def status_mb(field):  # VmRSS (now) or VmHWM (peak) of this process image, from /proc (Linux)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024

    base = status_mb("VmRSS")
    wl = W.mlp_synthetic(n=2000 if quick else 20_000)
    runner = W.EngineRunner(wl)
    net, opt = runner.net, runner.trainer.optimizer
    for _ in range(epochs):
        runner.epoch()
    params = sum(p.nbytes for p in net.params().values())
    slots = sum(a.nbytes for s in opt.slots.values() for a in s.values())
    widths = [784, 256, 128, 10]  # one batch: the input and every layer's output (z and a)
    acts = wl.batch_size * (widths[0] + 2 * sum(widths[1:])) * 4
    data = wl.x.nbytes + wl.y.nbytes
    needed = data + params + slots + acts
    # not getrusage's ru_maxrss: Linux carries it over fork + exec, so it would report the parent
    peak = status_mb("VmHWM")
    # what one more epoch allocates on top of what is live (NumPy reports to tracemalloc):
    # a batch's copies, activations and temporaries, the epoch's shuffled order
    tracemalloc.start()
    live = tracemalloc.get_traced_memory()[0]
    runner.epoch()
    workspace = tracemalloc.get_traced_memory()[1] - live
    tracemalloc.stop()
    print(json.dumps({"peak_rss_mb": round(peak, 1), "rss_after_imports_mb": round(base, 1),
                      "training_workspace_mb": round(workspace / 2**20, 2),
                      "dataset_mb": round(data / 2**20, 1), "weights_mb": round(params / 2**20, 2),
                      "optimizer_state_mb": round(slots / 2**20, 2), "batch_activations_mb": round(acts / 2**20, 2),
                      "budget_mb": round(2 * needed / 2**20 + 150, 1)}))


def peak_memory(threads: int, quick: bool) -> dict[str, Any]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-m", "bench.run", "--memory-child", "--threads", str(threads),
                          *(["--quick"] if quick else [])],
                         capture_output=True, text=True, check=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["within_budget"] = result["peak_rss_mb"] <= result["budget_mb"]
    return result


# -- main ---------------------------------------------------------------------------------------

def run(args) -> dict[str, Any]:
    use_torch = not args.no_torch and torch_available()
    only = set(args.only.split(",")) if args.only else set(W.NAMES)
    out: dict[str, Any] = {"threads": args.threads, "rounds": args.rounds,
                           "torch": _torch_version() if use_torch else None,
                           "malloc": {"pinned": False} if args.default_malloc else fix_malloc_thresholds(),
                           "runs": []}
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if os.environ.get(var):
            out.setdefault("env", {})[var] = os.environ[var]
    for threads in args.threads:
        with threadpool_limits(limits=threads):
            if use_torch:
                import torch
                torch.set_num_threads(threads)
            out["runs"].append(run_workloads(args, threads, only, use_torch))
    cores = os.cpu_count() or 1
    if not args.no_parallel and cores > 1:
        from .parallel import one_job_per_core
        out["one_job_per_core"] = one_job_per_core([n for n in W.NAMES if n in only], cores, args.quick,
                                                   rounds=1 if args.quick else 5)
    if not args.no_memory and "mlp" in only:
        out["memory"] = peak_memory(min(args.threads), args.quick)
    if not args.no_service:  # with the worker's BLAS threads, as the job runs in a worker
        from .service import service_overhead
        with threadpool_limits(limits=int(os.environ.get("BACKPROP_BLAS_THREADS", "1"))):
            out["service"] = service_overhead(epochs=5 if args.quick else 300, repeats=1 if args.quick else 5)
    out["bars"] = bars(out)
    return out


def _torch_version() -> str:
    import torch
    return torch.__version__


def run_workloads(args, threads: int, only: set[str], use_torch: bool) -> dict[str, Any]:
    """Every workload on every system with `threads` BLAS / intra-op threads, and the matmul
    peak at that thread count (the figure the MLP is a fraction of)."""
    out: dict[str, Any] = {"threads": threads, "blas": blas_summary(), "workloads": {}}
    sizes = (512,) if args.quick else (1024, 2048)
    peak_before = matmul_peak(sizes)
    for name in W.NAMES:
        if name not in only:
            continue
        wl = W.make(name, args.quick)
        runners: list = [W.EngineRunner(wl)]
        if name == "mlp":  # float64 on the same work, to compare with float32
            f64 = W.EngineRunner(wl, dtype="float64")
            f64.system = "engine_float64"
            runners.append(f64)
        if wl.sklearn_hidden:
            runners += [W.NumpyReferenceRunner(wl), W.SklearnRunner(wl)]
        if use_torch:
            runners.append(W.TorchRunner(wl))
        wall, cpu = measure(runners, args.rounds)
        med = {s: statistics.median(v) for s, v in wall.items()}
        med_cpu = {s: statistics.median(v) for s, v in cpu.items()}
        entry: dict[str, Any] = {"title": wl.title, "samples_per_s": {s: round(v, 1) for s, v in med.items()},
                                 "spread": {s: [round(min(v)), round(max(v))] for s, v in wall.items()},
                                 "samples_per_cpu_s": {s: round(v, 1) for s, v in med_cpu.items()}}
        for other in OTHERS:
            if other in med:
                entry[f"engine_vs_{other}"] = paired_ratio(wall["engine"], wall[other])
                entry[f"engine_vs_{other}_cpu"] = paired_ratio(cpu["engine"], cpu[other])
        if name == "mlp":
            entry["flops_per_sample"] = dict(zip(("6p", "exact"), W.mlp_gemm_flops(wl.spec), strict=True))
            entry["float64_over_float32_time"] = paired_ratio(wall["engine"], wall["engine_float64"])
            entry["float64_over_float32_time_cpu"] = paired_ratio(cpu["engine"], cpu["engine_float64"])
        out["workloads"][name] = entry

    peak_after = matmul_peak(sizes)  # measured again: a busy spell at the start must not lower the peak
    per_size = {n: round(max(peak_before[n], peak_after[n]), 1) for n in sizes}
    peak = max(per_size.values())
    out["matmul_peak"] = {"gflops": peak, "per_size": per_size}
    if "mlp" in out["workloads"]:
        e = out["workloads"]["mlp"]
        for system in ("engine", "numpy_reference"):
            for kind, flops in e["flops_per_sample"].items():
                key = "" if system == "engine" else f"{system}_"
                # The peak is the fastest of several products, so the MLP's fastest round is set
                # against it: both are what the machine does when nothing else runs on it. The
                # median round, which a noisy neighbour can slow, is given as well.
                e[f"{key}gflops_{kind}"] = round(e["spread"][system][1] * flops / 1e9, 2)
                e[f"{key}fraction_of_peak_{kind}"] = round(e[f"{key}gflops_{kind}"] / peak, 3)
                median = e["samples_per_s"][system] * flops / 1e9
                e[f"{key}fraction_of_peak_{kind}_median_round"] = round(median / peak, 3)
    return out


OTHERS = ("numpy_reference", "sklearn", "torch")  # the systems the engine is compared with


def bars(out: dict[str, Any]) -> dict[str, bool]:
    got: dict[str, bool] = {}
    for run in out["runs"]:
        at = f"threads={run['threads']}: "
        wls = run["workloads"]
        for name, wl in wls.items():
            for other, bar in BARS.get(name, {}).items():
                if f"engine_vs_{other}" in wl:
                    got[f"{at}{name}_vs_{other}>={bar}"] = wl[f"engine_vs_{other}"] >= bar
        if "mlp" in wls:
            got[f"{at}mlp_fraction_of_peak_6p>=0.6"] = wls["mlp"]["fraction_of_peak_6p"] >= 0.6
            got[f"{at}mlp_fraction_of_peak_exact>=0.6"] = wls["mlp"]["fraction_of_peak_exact"] >= 0.6
            got[f"{at}float64_time<=2.2x_float32"] = wls["mlp"]["float64_over_float32_time"] <= 2.2
    if "memory" in out:
        got["peak_rss_within_budget"] = out["memory"]["within_budget"]
    if "service" in out:
        got["service_within_1.05x+0.5s"] = out["service"]["within_bound"]
    return got


def table(out: dict[str, Any]) -> str:
    lines = [" ".join(f"{k}={v}" for k, v in out["env"].items()) + " (from the environment)", ""] \
        if out.get("env") else []
    for run in out["runs"]:
        lines += [f"threads: {run['threads']} (BLAS: " + ", ".join(
                      f"{b['internal_api']} {b['architecture']} x{b['num_threads']}" for b in run["blas"])
                  + (f"; torch {out['torch']})" if out["torch"] else "; torch not installed)"),
                  f"float32 matmul peak: {run['matmul_peak']['gflops']:.1f} GFLOP/s {run['matmul_peak']['per_size']}",
                  "",
                  f"{'workload':<8} {'system':<15} {'samples/s':>10} {'min..max':>17} {'engine is':>10}"
                  f" {'per CPU-s':>10} {'engine is':>10}"]
        for name, wl in run["workloads"].items():
            for system, rate in wl["samples_per_s"].items():
                lo, hi = wl["spread"][system]
                ratio = ratio_cpu = ""
                if system in OTHERS:
                    ratio = f"{wl[f'engine_vs_{system}']:.2f}x"
                    ratio_cpu = f"{wl[f'engine_vs_{system}_cpu']:.2f}x"
                lines.append(f"{name:<8} {system:<15} {rate:>10,.0f} {f'{lo:,}..{hi:,}':>17} {ratio:>10}"
                             f" {wl['samples_per_cpu_s'][system]:>10,.0f} {ratio_cpu:>10}")
        mlp = run["workloads"].get("mlp")
        if mlp:
            lines += ["", f"mlp, fastest round: {mlp['gflops_6p']:.1f} GFLOP/s counting 6 x params "
                          f"({mlp['fraction_of_peak_6p']:.0%} of peak; median round "
                          f"{mlp['fraction_of_peak_6p_median_round']:.0%}), {mlp['gflops_exact']:.1f} counting "
                          f"the GEMMs done ({mlp['fraction_of_peak_exact']:.0%}; "
                          f"{mlp['fraction_of_peak_exact_median_round']:.0%}); the plain-NumPy reference: "
                          f"{mlp['numpy_reference_fraction_of_peak_6p']:.0%} and "
                          f"{mlp['numpy_reference_fraction_of_peak_exact']:.0%}",
                      f"mlp float64 / float32 time: {mlp['float64_over_float32_time']:.2f}x "
                      f"({mlp['float64_over_float32_time_cpu']:.2f}x in CPU time)"]
        lines.append("")
    if "one_job_per_core" in out:
        most = out["runs"][-1]
        lines.append(f"one job per core (the worker's default), {most['threads']} processes x 1 thread, "
                     f"samples/s of all together [one process x {most['threads']} threads: engine, torch]:")
        for name, p in out["one_job_per_core"].items():
            one = most["workloads"].get(name, {}).get("samples_per_s", {})
            others = ", ".join(f"{one[s]:,.0f}" for s in ("engine", "torch") if s in one)
            lines.append(f"  {name:<8} {p['samples_per_s']:>10,.0f}  [{others}]")
        lines.append("")
    if "memory" in out:
        m = out["memory"]
        lines.append(f"mlp peak RSS (engine alone, subprocess): {m['peak_rss_mb']:.0f} MB, "
                     f"budget {m['budget_mb']:.0f} MB (dataset {m['dataset_mb']} MB; "
                     f"{m['rss_after_imports_mb']:.0f} MB after imports; "
                     f"{m['training_workspace_mb']:.1f} MB allocated per epoch beyond live arrays)")
    if "service" in out:
        s = out["service"]
        lines.append(f"service: job running->succeeded {s['job_seconds']:.2f} s vs engine alone "
                     f"{s['engine_seconds']:.2f} s ({s['ratio']:.3f}x, {s['overhead_ms_per_epoch']:.2f} ms per epoch; "
                     f"bound {s['bound_seconds']:.2f} s) [{s['workload']}]; CPU {s['job_cpu_seconds']:.2f} s vs "
                     f"{s['engine_cpu_seconds']:.2f} s")
    lines += ["", "bars: " + ", ".join(f"{k} {'ok' if v else 'MISSED'}" for k, v in out["bars"].items())]
    return "\n".join(lines)


def thread_counts(text: str) -> list[int]:
    counts = sorted({int(t) for t in text.split(",") if t.strip()})
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError("thread counts must be whole numbers >= 1")
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=thread_counts, default=thread_counts(f"1,{os.cpu_count() or 1}"),
                   help="comma-separated BLAS / intra-op thread counts, each a full run (default: 1 and "
                        "every core)")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds per workload (after 1 warm-up)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs")
    p.add_argument("--only", default="", help="comma-separated: mlp,digits,conv,lstm")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-service", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--no-parallel", action="store_true", help="skip the one-job-per-core throughput")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's mmap/trim thresholds dynamic (results then depend on allocation history)")
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        with threadpool_limits(limits=min(args.threads)):
            memory_child(epochs=1 if args.quick else 3, quick=args.quick)
        return 0
    out = run(args)
    print(table(out))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
