"""`.ci/run`: the suite through `make test`, with pytest's 15 slowest tests and the run's total time printed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_ci(tmp_path: Path, status: int) -> tuple[subprocess.CompletedProcess, str]:
    """.ci/run with ``make`` replaced by a script that records its arguments and exits with ``status``."""
    seen = tmp_path / "args"
    fake = tmp_path / "make"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {seen}\nexit {status}\n')
    fake.chmod(0o755)
    env = {**os.environ, "MAKE": str(fake), "PYTEST_ARGS": "-x"}
    done = subprocess.run([str(ROOT / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
    return done, seen.read_text()


def test_ci_runs_make_test_with_the_slowest_tests_and_the_total(tmp_path):
    done, args = run_ci(tmp_path, 0)
    assert args.split("\n")[:2] == ["test", "PYTEST_ARGS=--durations=15 -x"]
    assert done.returncode == 0
    assert done.stdout.strip().splitlines()[-1].startswith("make test: ") and " s in all" in done.stdout


def test_a_failing_suite_still_prints_its_cost_and_fails(tmp_path):
    done, _ = run_ci(tmp_path, 2)
    assert done.returncode == 2 and "exit status 2" in done.stdout
