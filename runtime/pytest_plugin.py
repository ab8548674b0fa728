"""pytest plugin: test your LLM-calling code against a real model, offline, in CI.

Registered through the ``pytest11`` entry point, so installing reverb-runtime is enough. The session fixture
``reverb`` starts ``reverb serve`` on a free loopback port with the tiny model and a fresh ledger, waits for it
(no sleeps), and yields a ``ReverbServer`` with ``base_url``, ``api_key`` and a ready ``openai.OpenAI`` client:

    def test_summary(reverb):
        r = reverb.client.chat.completions.create(model=reverb.model, temperature=0, max_tokens=20,
                                                  messages=[{"role": "user", "content": "hi"}])

Options (command line, or ini keys in pytest.ini / pyproject ``[tool.pytest.ini_options]``):
``--reverb-model`` / ``reverb_model``, ``--reverb-parallel`` / ``reverb_parallel``, ``--reverb-models`` /
``reverb_models`` (a models.toml), ``--reverb-startup-timeout`` / ``reverb_startup_timeout``,
``--reverb-deterministic`` / ``reverb_deterministic`` (default ``true``: the server runs ``--deterministic``, so a
request with ``temperature: 0`` or a ``seed`` gives the same answer whichever tests run beside it, as pytest-xdist
does; ``false`` measures the default mode's speed instead).
Heavy imports happen only when the fixture is used, so the plugin costs nothing in other test suites.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest


def pytest_addoption(parser) -> None:
    group = parser.getgroup("reverb", "reverb-runtime test server")
    for name, default, help_ in [
        ("model", "", "model name from models.toml (default: the catalogue's default)"),
        ("parallel", "2", "slots decoded together"),
        ("models", "", "path of a models.toml"),
        ("startup-timeout", "120", "seconds to wait for the server"),
        ("deterministic", "true", "same answer for a seeded request whatever runs beside it (true/false)"),
    ]:
        group.addoption(f"--reverb-{name}", default=None, help=help_)
        parser.addini(f"reverb_{name.replace('-', '_')}", help_, default=default)


@dataclass
class ReverbServer:
    base_url: str            # e.g. http://127.0.0.1:41234 (OpenAI clients want base_url + "/v1")
    api_key: str
    model: str
    startup_seconds: float
    process: subprocess.Popen = field(repr=False)
    db_path: Path = field(repr=False, default=None)
    _client: object = field(default=None, repr=False)

    @property
    def client(self):
        """A ready ``openai.OpenAI`` client (no retries, so failures surface in your test)."""
        if self._client is None:
            import openai
            self._client = openai.OpenAI(base_url=self.base_url + "/v1", api_key=self.api_key, max_retries=0)
        return self._client


def _opt(config, name: str) -> str:
    value = config.getoption(f"--reverb-{name}")
    return value if value is not None else config.getini(f"reverb_{name.replace('-', '_')}")


def _flag(value: str, name: str) -> bool:
    low = str(value).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise pytest.UsageError(f"{name} takes true or false, not {value!r}")


def start_server(model: str = "", parallel: int = 2, models: str = "", timeout: float = 120,
                 workdir: Path | None = None, extra: tuple[str, ...] = (), deterministic: bool = True
                 ) -> ReverbServer:
    """Start ``reverb serve`` on a free loopback port and wait until it accepts requests."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="reverb-pytest-"))
    ready = workdir / "ready"
    key = "sk-test-" + secrets.token_hex(12)
    cmd = [sys.executable, "-m", "reverb.cli", "serve", "--host", "127.0.0.1", "--port", "0",
           "--ready-file", str(ready), "--db", str(workdir / "ledger.sqlite3"), "--api-key", key,
           "--parallel", str(parallel), "--deterministic" if deterministic else "--no-deterministic", *extra]
    if model:
        cmd += ["--model", model]
    if models:
        cmd += ["--catalogue", models]
    env = {k: v for k, v in os.environ.items() if k != "REVERB_API_KEY"}
    log = open(workdir / "server.log", "wb")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() - t0 > timeout:
            proc.kill()
            raise RuntimeError("reverb server did not start:\n" + (workdir / "server.log").read_text())
        time.sleep(0.02)
    base = ready.read_text().strip()
    import json
    import urllib.request
    req = urllib.request.Request(base + "/v1/models", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310 - loopback
        names = [m["id"] for m in json.load(r)["data"]]
    return ReverbServer(base_url=base, api_key=key, model=model or names[0],
                        startup_seconds=time.monotonic() - t0, process=proc, db_path=workdir / "ledger.sqlite3")


def stop_server(server: ReverbServer, timeout: float = 30) -> int:
    """SIGTERM, wait for the graceful drain, kill if it does not come."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode


@pytest.fixture(scope="session")
def reverb(request, tmp_path_factory):
    """A real reverb server with the tiny model, for the whole test session."""
    cfg = request.config
    server = start_server(model=_opt(cfg, "model"), parallel=int(_opt(cfg, "parallel")),
                          models=_opt(cfg, "models"), timeout=float(_opt(cfg, "startup-timeout")),
                          workdir=tmp_path_factory.mktemp("reverb"),
                          deterministic=_flag(_opt(cfg, "deterministic"), "--reverb-deterministic"))
    yield server
    stop_server(server)
