"""examples/run_examples.py runs every example spec through a real server (three epochs each)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .stack import Stack

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_examples_run_through_the_service(tmp_path):
    stack = Stack(tmp_path).up()
    try:
        out = tmp_path / "results"
        done = subprocess.run([sys.executable, str(ROOT / "examples" / "run_examples.py"), "--quick",
                               "--url", stack.url, "--out", str(out)],
                              capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert done.returncode == 0, done.stdout + done.stderr + stack.logs()
    finally:
        stack.down()
    results = json.loads((out / "results.json").read_text())
    specs = sorted(p.stem for p in (ROOT / "examples" / "specs").glob("*.json"))
    assert [r["example"] for r in results] == specs
    assert all(r["epochs"] == 3 and len(r["loss"]) == 3 for r in results)
    assert "| iris:" in (out / "results.md").read_text()
