""".ci/run on a fresh PostgreSQL: the database `test` that tests/conftest.py uses is created
when it is missing, and a failure to create it stops CI loudly. The step is run on its own, with
a stand-in psql that plays the server."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAKE_PSQL = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
case "$*" in
  *"SELECT 1 FROM pg_database"*) [ -n "$HAS_TEST" ] && echo 1; exit 0 ;;
  *"CREATE DATABASE test"*) [ -n "$CREATE_FAILS" ] && { echo 'psql: permission denied' >&2; exit 1; }; exit 0 ;;
esac
exit 3
"""


def database_step() -> str:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "CREATE DATABASE test" in line)
    while start > 0 and not lines[start - 1].startswith("#"):
        start -= 1
    end = next(i for i in range(start, len(lines)) if lines[i] == "fi")
    return "\n".join(["set -euo pipefail", *lines[start - 1:end + 1]])


@pytest.mark.parametrize("has_test, create_fails, code, created", [
    (True, False, 0, False), (False, False, 0, True), (False, True, 1, True)])
def test_ci_creates_the_test_database_when_missing(tmp_path, has_test, create_fails, code, created):
    (tmp_path / "psql").write_text(FAKE_PSQL)
    (tmp_path / "psql").chmod(0o755)
    calls = tmp_path / "calls"
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "CALLS": str(calls),
           "HAS_TEST": "1" if has_test else "", "CREATE_FAILS": "1" if create_fails else ""}
    result = subprocess.run(["bash", "-c", database_step()], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == code, result.stdout + result.stderr
    assert ("CREATE DATABASE test" in calls.read_text()) == created
    if create_fails:
        assert "CI: cannot create PostgreSQL database test" in result.stderr
