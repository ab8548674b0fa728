"""Claude Code against `reverb serve`: the request body `claude -p` really sends (recorded into
tests/data/claude_code_request.json: 25 tools, ~87 KB, 22.6k tokens with the tiny model's tokenizer) answered with
Anthropic's well-formed context error on the tiny model's 2048-token context, and `claude -p` itself completing a
turn (and showing the server's error for the full prompt). Claude Code comes from npm (`make claude-code`); these
tests skip, loudly, only when it is not installed."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from reverb.money import MICRO

from .conftest import SESSION_OWNED, Server
from .upstreams import wait_row

pytestmark = pytest.mark.model
DATA = Path(__file__).resolve().parent / "data" / "claude_code_request.json"
NPM_DIR = Path(os.environ.get("NPM_DIR", Path.home() / ".cache" / "reverb" / "npm" / "anthropic"))
CLAUDE = NPM_DIR / "node_modules" / ".bin" / "claude"
MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    # max_tokens is a ceiling: Claude Code's 32000 is lowered to the cap, so a rambling answer ends soon
    s = Server(tmp_path_factory.mktemp("claude"), "--parallel", "2", "--max-tokens-cap", "48")
    with s.ledger() as ledger:
        s.alice = ledger.create_key("alice", 5 * MICRO)
    s.start()
    SESSION_OWNED.add(s.proc.pid)
    try:
        yield s
    finally:
        s.stop()
        with s.ledger() as ledger:
            inv = ledger.invariant()
        assert inv["ok"], inv


def recorded() -> dict:
    body = json.loads(DATA.read_text())
    body["model"] = MODEL        # Claude Code names its own model; pointed at reverb, the user names one served
    return body


def test_the_recorded_request_is_read_whole_and_answered_with_a_context_error(srv):
    body = recorded()
    assert len(body["tools"]) >= 24 and body["stream"] is True and body["max_tokens"] > 2048
    headers = {"x-api-key": srv.alice, "anthropic-version": "2023-06-01",
               "anthropic-beta": "claude-code-20250219,context-management-2025-06-27"}
    with httpx.Client(base_url=srv.base_url, headers=headers, timeout=300) as http:
        counted = http.post("/v1/messages/count_tokens", json=body)
        assert counted.status_code == 200, counted.text
        tokens = counted.json()["input_tokens"]
        assert tokens > 2048          # the whole prompt: system blocks, 25 tools' schemas, the messages
        r = http.post("/v1/messages?beta=true", json=body)
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")
    error = r.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"].startswith("prompt is too long: ")
    assert f"maximum context length is 2048 tokens; the messages use {tokens}" in error["error"]["message"]
    row = wait_row(srv, r.headers["x-request-id"])
    assert row["error_code"] == "context_length_exceeded" and row["endpoint"] == "messages"


def claude(srv, tmp_path: Path, *args: str, extra_body: dict | None = None) -> subprocess.CompletedProcess:
    """`claude -p` as its docs set it up for another endpoint: ANTHROPIC_BASE_URL and ANTHROPIC_API_KEY, with its
    own HOME and config directory and no traffic but to the server."""
    if not CLAUDE.exists():
        pytest.skip(f"!!! Claude Code not installed at {CLAUDE}: run `make claude-code`; NOT tested")
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "CLAUDE_CONFIG_DIR": str(home / ".claude"),
           "ANTHROPIC_BASE_URL": srv.base_url, "ANTHROPIC_API_KEY": srv.alice,
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1"}
    if extra_body is not None:
        env["CLAUDE_CODE_EXTRA_BODY"] = json.dumps(extra_body)
    return subprocess.run([str(CLAUDE), "-p", "Say hello", "--model", MODEL, *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


def test_claude_code_completes_a_turn(srv, tmp_path):
    # The tiny model at Claude Code's default temperature (1) rambles until max_tokens, which Claude Code takes
    # for its own output limit; greedy (CLAUDE_CODE_EXTRA_BODY, merged into each request) ends the answer.
    done = claude(srv, tmp_path, "--system-prompt", "You are terse.", "--tools", "", extra_body={"temperature": 0})
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip()
    log = srv.log()
    assert re.search(r"POST messages 200 key=alice model=smollm2-135m", log), log[-3000:]


def test_claude_code_shows_the_servers_context_error_for_its_full_prompt(srv, tmp_path):
    full = claude(srv, tmp_path)
    assert full.returncode != 0
    assert "Prompt is too long" in full.stdout + full.stderr, full.stdout + full.stderr
    assert "POST messages 400 context_length_exceeded key=alice" in srv.log()


def test_the_recorded_request_fits_a_large_context_and_its_tools_grammar_compiles():
    """What a server with a context of 32768 does with the recorded request before it reads the prompt: every
    field checked, the prompt rendered and counted (it fits), and the grammar of its 25 tools compiled. (Reading
    22.6k tokens took 934 s on a busy 2-core machine, longer than a test may: docs/anthropic.md.)"""
    import asyncio

    from reverb.api import wire
    from reverb.loader import load_backend
    from reverb.models import registry
    from reverb.settings import Settings

    settings = Settings.build(environ={}, ctx=32768, parallel=1)
    spec = registry.load(settings.catalogue_path).specs[MODEL]
    ask, _ = wire.parse(recorded(), wire.MESSAGES, settings)
    assert ask.fit and ask.sampling.max_tokens == settings.max_tokens_cap and len(ask.tools.tools) >= 24

    async def prepare():
        backend = load_backend(spec, settings)
        try:
            prompt = await backend.prepare(ask)
            compiled = await backend.compile(prompt, ask)
            return backend.info.ctx, prompt.counts.n_tokens, compiled
        finally:
            backend.close()
    ctx, tokens, compiled = asyncio.run(prepare())
    assert 2048 < tokens < ctx == 32768
    assert compiled.constraint is not None and compiled.constraint.tool_parser is not None
