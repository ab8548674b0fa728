"""Start and stop a ``reverb serve`` for a test session: free loopback port, fresh ledger, ready file, no sleeps.

The server runs with ``--exit-with-parent`` (a killed test run leaves nothing behind) and, unless told otherwise,
the test control routes (faults, journal) behind a secret of its own, passed in its environment, never argv.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ReverbServer:
    base_url: str            # e.g. http://127.0.0.1:41234 (OpenAI clients want base_url + "/v1")
    api_key: str             # the session's own key (each test gets its own through the `reverb` fixture)
    model: str
    startup_seconds: float
    process: subprocess.Popen = field(repr=False)
    db_path: Path = field(repr=False, default=None)
    control_secret: str = field(repr=False, default="")
    workdir: Path = field(repr=False, default=None)
    _client: object = field(default=None, repr=False)

    @property
    def client(self):
        """A ready ``openai.OpenAI`` client (no retries, so failures surface in your test)."""
        if self._client is None:
            import openai
            self._client = openai.OpenAI(base_url=self.base_url + "/v1", api_key=self.api_key, max_retries=0)
        return self._client

    def log(self) -> str:
        return (self.workdir / "server.log").read_text(errors="replace") if self.workdir else ""


def split_threads(workers: int, cores: int | None = None) -> int:
    """llama.cpp threads for one of ``workers`` servers sharing the machine, so together they never exceed the
    cores (llama.cpp's spinning threads collapse when they do)."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def start_server(model: str = "", parallel: int = 2, models: str = "", timeout: float = 120,
                 workdir: Path | None = None, extra: tuple[str, ...] = (), deterministic: bool = True,
                 control: bool = True, threads: int = 0) -> ReverbServer:
    """Start ``reverb serve`` on a free loopback port and wait until it accepts requests."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="reverb-pytest-"))
    ready = workdir / "ready"
    key = "sk-test-" + secrets.token_hex(12)
    secret = secrets.token_hex(16) if control else ""
    cmd = [sys.executable, "-m", "reverb.cli", "serve", "--host", "127.0.0.1", "--port", "0",
           "--ready-file", str(ready), "--db", str(workdir / "ledger.sqlite3"), "--api-key", key,
           "--parallel", str(parallel), "--slots-per-key", str(parallel),   # one suite: every slot is its own
           # and one tenant: each test has a key of its own, and a prompt cached for one test's key (the same
           # system prompt, tools, fixture text) would otherwise be read again for the next
           "--share-prompt-cache",
           "--deterministic" if deterministic else "--no-deterministic", "--exit-with-parent", *extra]
    if model:
        cmd += ["--model", model]
    if models:
        cmd += ["--catalogue", models]
    if threads:
        cmd += ["--threads", str(threads)]
    env = {k: v for k, v in os.environ.items() if k not in ("REVERB_API_KEY", "REVERB_TEST_CONTROL")}
    if secret:
        env["REVERB_TEST_CONTROL"] = secret
    log = open(workdir / "server.log", "wb")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() - t0 > timeout:
            proc.kill()
            proc.wait()
            raise RuntimeError("reverb server did not start:\n" + (workdir / "server.log").read_text())
        time.sleep(0.02)
    base = ready.read_text().strip()
    req = urllib.request.Request(base + "/v1/models", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310 - loopback
        names = [m["id"] for m in json.load(r)["data"]]
    return ReverbServer(base_url=base, api_key=key, model=model or names[0],
                        startup_seconds=time.monotonic() - t0, process=proc, db_path=workdir / "ledger.sqlite3",
                        control_secret=secret, workdir=workdir)


def stop_server(server: ReverbServer, timeout: float = 30) -> int:
    """SIGTERM, wait for the graceful drain, kill if it does not come. A server this process did not start
    (an xdist worker's view of the controller's) is left alone."""
    if server.process is None:
        return 0
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode
