"""`make bench` keeps working: a tiny run of every workload (no timing is asserted)."""

from __future__ import annotations

import json

from bench.run import main


def test_quick_bench_prints_a_table_and_a_json_last_line(capsys):
    assert main(["--quick", "--rounds", "1", "--no-torch", "--no-memory"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    out = json.loads(lines[-1])
    assert set(out["workloads"]) == {"mlp", "digits", "conv", "lstm"}
    for name in ("mlp", "digits"):
        rates = out["workloads"][name]["samples_per_s"]
        assert rates["engine"] > 0 and rates["sklearn"] > 0
        assert out["workloads"][name]["engine_vs_sklearn"] > 0
    assert out["workloads"]["mlp"]["float64_over_float32_time"] > 0
    assert out["matmul_peak"]["gflops"] > 0
    assert out["service"]["job_seconds"] > 0 and out["service"]["engine_seconds"] > 0
    assert all(isinstance(v, bool) for v in out["bars"].values())
    assert any(line.startswith("workload") for line in lines)
