"""Anthropic's Node SDK (@anthropic-ai/sdk, installed by `make claude-code`) against `reverb serve`:
tests/node/anthropic_sdk.cjs. Skips, loudly, only when node or the package is not installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import KEY

pytestmark = pytest.mark.model
SCRIPT = Path(__file__).resolve().parent / "node" / "anthropic_sdk.cjs"
NPM_DIR = Path(os.environ.get("NPM_DIR", Path.home() / ".cache" / "reverb" / "npm" / "anthropic"))
SDK = NPM_DIR / "node_modules" / "@anthropic-ai" / "sdk"


def test_the_node_sdk_creates_streams_counts_calls_tools_and_lists(server):
    node = shutil.which("node")
    if node is None or not SDK.exists():
        pytest.skip(f"!!! node or {SDK} not found: run `make claude-code`; the Node SDK was NOT tested")
    env = {**os.environ, "ANTHROPIC_SDK": str(SDK), "REVERB_URL": server.base_url, "REVERB_KEY": KEY}
    r = subprocess.run([node, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == [w for step in ("create", "stream", "countTokens", "tools", "models", "auth")
                                for w in ("ok", step)], r.stdout
