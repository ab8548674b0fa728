"""Codex CLI (`codex exec`, npm @openai/codex, installed by `make codex` into ~/.cache/reverb/npm/codex) against
the Responses API, set up as docs/responses.md says: a custom provider with ``wire_api = "responses"`` in a
config.toml under a private ``CODEX_HOME``. No network: everything is on loopback.

- What Codex sends: pointed at a capture server (tests/capture_server.py), its request has the shape recorded in
  tests/data/codex_request.json, and reverb's field table accepts it. ``REVERB_RECORD_CODEX=1`` re-records the
  file from the Codex installed.
- Against `reverb serve` with the tiny model at its catalogue context (2048 tokens; Codex's own prompt is about
  6500): Codex reads the server's error (``context_length_exceeded``), says the context is too small and exits
  non-zero. docs/responses.md says how
  to serve a context that fits (--ctx 8192).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reverb.api import wire
from reverb.settings import Settings

from .conftest import KEY, ROOT, kill_group, spawn, wait_for

pytestmark = pytest.mark.model
DATA = Path(__file__).resolve().parent / "data" / "codex_request.json"
CODEX = Path(os.environ.get("REVERB_CODEX") or Path.home() / ".cache/reverb/npm/codex/node_modules/.bin/codex")
MODEL = "smollm2-135m"


@pytest.fixture(autouse=True)
def _codex():
    if not CODEX.exists():
        pytest.skip(f"!!! Codex CLI not found at {CODEX}: the Codex tests were NOT run; `make codex` installs it")


def codex_exec(tmp_path: Path, base_url: str, prompt: str, timeout: float = 600) -> tuple[int, str]:
    """Run ``codex exec`` with a private CODEX_HOME whose config.toml names reverb as a Responses provider."""
    home, work = tmp_path / "codex-home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (home / "config.toml").write_text(f'model = "{MODEL}"\nmodel_provider = "reverb"\n\n'
                                      f'[model_providers.reverb]\nname = "reverb"\nbase_url = "{base_url}/v1"\n'
                                      f'env_key = "REVERB_API_KEY"\nwire_api = "responses"\n')
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CODEX_HOME": str(home), "REVERB_API_KEY": KEY}
    proc = spawn([str(CODEX), "exec", "--skip-git-repo-check", prompt], cwd=work, env=env,
                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        kill_group(proc)
    return proc.returncode, out


def _shape(body: dict) -> dict:
    return {"keys": sorted(body), "tools": [(t.get("type"), t.get("name")) for t in body["tools"]],
            "input": [(i.get("type"), i.get("role")) for i in body["input"]],
            "fixed": {k: body.get(k) for k in ("stream", "store", "tool_choice", "parallel_tool_calls", "include")}}


def test_codex_sends_the_recorded_request(tmp_path):
    out, ready = tmp_path / "captured", tmp_path / "capture-ready"
    server = spawn([sys.executable, "-m", "tests.capture_server", str(out), str(ready)], cwd=ROOT)
    try:
        base = wait_for(lambda: ready.exists() and ready.read_text(), what="the capture server")
        code, log = codex_exec(tmp_path, base, "Say hello")
    finally:
        kill_group(server)
    assert code == 0, log
    posts = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert [p["path"] for p in posts] == ["/v1/responses"], log
    body = posts[0]["body"]
    assert body["model"] == MODEL and body["input"][-1]["content"][0]["text"] == "Say hello"
    if os.environ.get("REVERB_RECORD_CODEX"):
        DATA.write_text(json.dumps(body, indent=1, ensure_ascii=False) + "\n")
    assert _shape(body) == _shape(json.loads(DATA.read_text()))
    assert wire.read(body, wire.RESPONSES, Settings.build(environ={})).error is None


def test_codex_exec_shows_the_servers_own_error(make_server, tmp_path):
    srv = make_server("--parallel", "1")
    code, log = codex_exec(tmp_path, srv.base_url, "Say hello")
    assert code != 0
    # Codex reads the error's code (context_length_exceeded) and says so in its own words
    assert "ran out of room in the model's context window" in log, log
    with srv.ledger() as ledger:
        rows = ledger.engine.read("SELECT endpoint, status, error_code FROM requests")
    assert set(rows) == {("responses", "rejected", "context_length_exceeded")}
