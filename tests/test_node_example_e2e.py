"""The Node example (examples/node-ci): node:test and the official openai npm package against `reverb serve
--ready-file`, faults included. npm installs the package into examples/node-ci/node_modules (git-ignored) on the
first run. Skips, loudly, only when node is not installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.model, pytest.mark.slow]
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "node-ci"


def test_the_node_example_passes(tmp_path):
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("!!! node/npm not found: the Node example (examples/node-ci) was NOT tested; install nodejs")
    if not (EXAMPLE / "node_modules" / "openai").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=EXAMPLE, check=True, timeout=600,
                       capture_output=True)
    env = {**os.environ, "REVERB_SERVE": f"{sys.executable} -m reverb.cli serve", "TMPDIR": str(tmp_path)}
    env.pop("REVERB_API_KEY", None)
    r = subprocess.run([node, "--test", "--test-reporter=spec"], cwd=EXAMPLE, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("answers, the same twice", "a 429 with Retry-After is retried after the wait",
                 "each status fault surfaces as the SDK's error", "a truncated stream is an error, not a short answer",
                 "a connection reset is an APIConnectionError"):
        assert f"✔ {name}" in r.stdout, r.stdout
    assert not list(tmp_path.glob("reverb-node-*")), "stop() removes the server's folder"
