"""The servers the benchmark compares, each started on a free loopback port: reverb (default and deterministic
mode), llama.cpp's own llama-server and llama-cpp-python's server."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Peer:
    label: str
    base: str
    key: str
    proc: subprocess.Popen = field(repr=False)
    log: Path = field(repr=False)

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                            env={**os.environ, **(env or {})})


def _wait(peer: Peer, url: str, timeout: float = 180) -> Peer:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if peer.proc.poll() is not None:
            raise RuntimeError(f"{peer.label} exited:\n{peer.log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(url, timeout=2, headers={"Authorization": f"Bearer {peer.key}"}).status_code == 200:
                return peer
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    peer.stop()
    raise RuntimeError(f"{peer.label} did not come up:\n{peer.log.read_text(errors='replace')[-3000:]}")


def reverb(tmp: Path, label: str, threads: int, parallel: int, ctx: int, extra: list[str]) -> Peer:
    key = "sk-bench-" + secrets.token_hex(8)
    ready = tmp / f"{label}.ready"
    log = tmp / f"{label}.log"
    cmd = [sys.executable, "-m", "reverb.cli", "serve", "--port", "0", "--ready-file", str(ready),
           "--db", str(tmp / f"{label}.sqlite3"), "--api-key", key, "--threads", str(threads),
           "--parallel", str(parallel), "--ctx", str(ctx), *extra]
    proc = _start(cmd, log)
    deadline = time.monotonic() + 180
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{label} did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)
    return _wait(Peer(label, ready.read_text().strip(), key, proc, log), ready.read_text().strip() + "/v1/models")


def llama_server(tmp: Path, binary: Path, model: Path, threads: int, parallel: int, ctx: int,
                 extra: tuple[str, ...] | list[str] = (), label: str = "llama-server") -> Peer:
    """llama.cpp's server with its defaults (n_batch 2048, n_ubatch 512, --cache-ram 8192 MiB, one KV stream per
    slot), the same model, slots, context per slot and threads as reverb, flash attention on; ``extra`` flags."""
    port = free_port()
    log = tmp / f"{label.replace(' ', '_')}.log"
    cmd = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-np", str(parallel),
           "-c", str(ctx * parallel), "-t", str(threads), "-tb", str(threads), "-fa", "on", "--no-warmup", *extra]
    peer = Peer(label, f"http://127.0.0.1:{port}", "none", _start(cmd, log), log)
    return _wait(peer, peer.base + "/health")


def llama_cpp_python(tmp: Path, python: Path, model: Path, threads: int, ctx: int) -> Peer:
    port = free_port()
    log = tmp / "llama-cpp-python.log"
    cmd = [str(python), "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
           "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", str(ctx),
           "--flash_attn", "true"]
    peer = Peer("llama-cpp-python server", f"http://127.0.0.1:{port}", "none", _start(cmd, log), log)
    return _wait(peer, peer.base + "/v1/models")
