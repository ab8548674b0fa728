"""The Responses API through the official openai npm package (tests/node/responses.mjs): create, stream, a
function-tool round trip over a stored response, retrieve and delete, against `reverb serve` and the tiny model.
npm installs the package into examples/node-ci/node_modules on the first run (as the Node example's test does).
Skips, loudly, only when node is not installed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import KEY

pytestmark = pytest.mark.model
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "node-ci"


def test_the_openai_npm_package_speaks_responses(server):
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("!!! node/npm not found: the Responses API was NOT tested from Node; install nodejs")
    if not (EXAMPLE / "node_modules" / "openai").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=EXAMPLE, check=True, timeout=600,
                       capture_output=True)
    r = subprocess.run([node, str(ROOT / "tests" / "node" / "responses.mjs")], capture_output=True, text=True,
                       timeout=600, env={"PATH": "/usr/bin:/bin", "BASE_URL": server.base_url, "KEY": KEY})
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["created"]["id"].startswith("resp_") and out["created"]["status"] == "completed"
    assert json.loads(out["created"]["text"]) in ({"ok": True}, {"ok": False})
    kinds = out["stream"]["kinds"]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert out["stream"]["text"] == out["created"]["text"]
    assert out["tools"]["name"] == "get_weather" and isinstance(out["tools"]["args"]["city"], str)
    assert out["tools"]["answer"] and out["tools"]["grew"]
    assert out["stored"] == {"same": True, "gone": True}
