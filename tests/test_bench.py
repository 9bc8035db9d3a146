"""`make bench` keeps working: a tiny run of every workload (no timing is asserted)."""

from __future__ import annotations

import json
import os

import numpy as np

from bench.run import main


def test_quick_bench_prints_a_table_and_a_json_last_line(capsys):
    assert main(["--quick", "--rounds", "1", "--threads", "1,2", "--no-torch", "--no-memory"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    out = json.loads(lines[-1])
    assert [run["threads"] for run in out["runs"]] == [1, 2]
    for run in out["runs"]:
        assert set(run["workloads"]) == {"mlp", "digits", "conv", "lstm"}
        for name in ("mlp", "digits"):
            rates = run["workloads"][name]["samples_per_s"]
            assert rates["engine"] > 0 and rates["sklearn"] > 0 and rates["numpy_reference"] > 0
            assert run["workloads"][name]["engine_vs_sklearn"] > 0
        assert run["workloads"]["mlp"]["float64_over_float32_time"] > 0
        assert run["matmul_peak"]["gflops"] > 0
    assert {b["num_threads"] for b in out["runs"][1]["blas"]} == {2}
    assert "threads=2: mlp_vs_sklearn>=1.5" in out["bars"]
    cores = os.cpu_count() or 1
    if cores > 1:  # spawned processes, one per core, training at the same time
        parallel = out["one_job_per_core"]["mlp"]
        assert parallel["processes"] == cores and len(parallel["per_process"]) == cores
        assert parallel["samples_per_s"] > 0
    else:
        assert "one_job_per_core" not in out
    assert out["service"]["job_seconds"] > 0 and out["service"]["engine_seconds"] > 0
    assert all(isinstance(v, bool) for v in out["bars"].values())
    assert any(line.startswith("workload") for line in lines)


def test_the_numpy_reference_computes_the_engines_gradients():
    """The plain-NumPy reference does the same work as the engine, or the ratio means nothing."""
    from bench import workloads as W

    wl = W.mlp_digits(epochs_per_round=1)
    ref = W.NumpyReferenceRunner(wl)
    engine = W.EngineRunner(wl).net
    names = [f"dense_{i}/{k}" for i in range(3) for k in ("kernel", "bias")]
    arrays = [a for pair in zip(ref.w, ref.b, strict=True) for a in pair]
    engine.set_weights(dict(zip(names, arrays, strict=True)))
    x, y = wl.x[:100], wl.y[:100]  # a partial batch (the buffers hold 128 rows)
    ref.gradients(x, y)
    _, grads = engine.loss_and_gradients(x, y)
    ref_grads = [g for pair in zip(ref.gw, ref.gb, strict=True) for g in pair]
    for name, got in zip(names, ref_grads, strict=True):
        np.testing.assert_allclose(got, grads[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_the_numpy_reference_takes_the_engines_adam_steps():
    from bench import workloads as W
    from core.nn.optimizers import Adam

    ref = W.NumpyReferenceRunner(W.mlp_digits(epochs_per_round=1))
    rng = np.random.default_rng(0)
    engine = Adam({"learning_rate": W.LR, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8})
    weights = {"w": ref.flat.copy()}
    for _ in range(3):
        ref.grad[:] = rng.normal(size=ref.grad.shape)
        ref.adam()
        engine.step(weights, {"w": ref.grad.copy()}, W.LR)
    np.testing.assert_allclose(ref.flat, weights["w"], rtol=1e-5, atol=1e-7)


def test_ratios_pair_the_systems_round_by_round():
    """The host is slow in rounds 2 and 4, halving both systems, and in round 5 it slows the
    engine more than the other: the paired ratio stays 2, where the ratio of the medians pairs
    the engine's slow rounds with the other system's faster ones (50 / 40 = 1.25)."""
    from bench.run import paired_ratio

    engine = [100.0, 50.0, 100.0, 50.0, 50.0]
    other = [50.0, 25.0, 50.0, 25.0, 40.0]
    assert paired_ratio(engine, other) == 2.0
    assert np.median(engine) / np.median(other) == 1.25
