"""`make soak`: a bounded soak of mixed clients against a real server on loopback.

Concurrent streams, clients that disconnect mid-stream, bad requests, a key that runs out of credit, and gateway
calls, all at once for ``--seconds``. Reports requests served, outcomes by kind, p50/p99 latency, the server's RSS
at start and end, and the ledger invariant. Traffic goes to 127.0.0.1 only; every loop stops at the deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def chat(content: str, **kw) -> dict:
    return {"model": "smollm2-135m", "messages": [{"role": "user", "content": content}], **kw}


async def client(kind: str, base: str, key: str, done, out: list, rng: random.Random) -> None:
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=600) as http:
        while not done():
            t0 = time.monotonic()
            try:
                outcome = await ONE[kind](http, rng)
            except httpx.HTTPError as e:
                outcome = f"client-error:{type(e).__name__}"
            out.append((kind, outcome, time.monotonic() - t0))


async def _stream(http, rng):
    async with http.stream("POST", "/v1/chat/completions", json=chat(
            "Tell me about the sea.", max_tokens=rng.randint(16, 96), stream=True,
            stream_options={"include_usage": True})) as r:
        if r.status_code != 200:
            return str(r.status_code)
        lines = [ln async for ln in r.aiter_lines() if ln]
        return "200" if lines and lines[-1] == "data: [DONE]" else "200-truncated"


async def _disconnect(http, rng):
    async with http.stream("POST", "/v1/chat/completions", json=chat("Write a long story.", max_tokens=400,
                                                                     stream=True)) as r:
        if r.status_code != 200:
            return str(r.status_code)
        n = 0
        async for line in r.aiter_lines():
            n += line.startswith("data: {")
            if n >= rng.randint(2, 8):
                return "disconnect"
    return "200"


BAD = {  # bodies that are wrong in the dialect they are sent to
    "/v1/chat/completions": [chat("x", temperature="hot"), chat("x", max_tokens=10**9), chat("x", top_p=7)],
    "/api/endpoint": [chat("x", options={"temperature": "hot"}), chat("x", options={"max_tokens": -1}),
                      chat("x", options=[])],
}


async def _bad(http, rng):
    path = rng.choice(list(BAD))
    body = rng.choice([b"{nope", json.dumps({"messages": 3}).encode(), json.dumps(chat("x", model="missing")).encode(),
                       *(json.dumps(b).encode() for b in BAD[path])])
    r = await http.post(path, content=body, headers={"content-type": "application/json"})
    await asyncio.sleep(0.05)  # a buggy client, not a flood
    return str(r.status_code)


async def _gateway(http, rng):
    r = await http.post("/api/endpoint", json=chat("Say something kind.", options={"max_tokens": rng.randint(4, 32)}))
    if r.status_code == 402:
        await asyncio.sleep(0.2)  # out of credit: a real client backs off
    return str(r.status_code)


ONE = {"stream": _stream, "disconnect": _disconnect, "bad": _bad, "gateway": _gateway, "broke": _gateway}


def run(seconds: float, parallel: int = 4, clients: dict | None = None, need: tuple[str, ...] = (),
        max_seconds: float = 900, serve_args: tuple[str, ...] = ()) -> dict:
    """Soak for ``seconds``, and on until every outcome in ``need`` (e.g. "broke 402") has been seen at least once
    (a busy machine gets there later, not never), but never past ``max_seconds``. ``serve_args`` go to the server
    (e.g. a small ``--prompt-cache-mb``: the host prompt cache grows by design up to its bound, 1 GiB by default)."""
    clients = clients or {"stream": 4, "disconnect": 2, "bad": 2, "gateway": 2, "broke": 1}
    tmp = Path(tempfile.mkdtemp(prefix="reverb-soak-"))
    ready, db = tmp / "ready", tmp / "ledger.sqlite3"
    dev = "sk-soak-" + secrets.token_hex(6)
    proc = subprocess.Popen([sys.executable, "-m", "reverb.cli", "serve", "--port", "0", "--ready-file", str(ready),
                             "--db", str(db), "--api-key", dev, "--parallel", str(parallel), "--max-queue", "16",
                             *serve_args],
                            stdout=open(tmp / "server.log", "wb"), stderr=subprocess.STDOUT, cwd=ROOT,
                            start_new_session=True)
    try:
        while not ready.exists():
            if proc.poll() is not None:
                raise RuntimeError((tmp / "server.log").read_text())
            time.sleep(0.05)
        base = ready.read_text().strip()
        sys.path.insert(0, str(ROOT))
        from reverb.ledger import Ledger
        with Ledger(db) as ledger:
            funded = ledger.create_key("soak-funded", 100_000_000)
            broke = ledger.create_key("soak-broke", 15)  # enough for a request or two, then out of credit
        keys = {"stream": dev, "disconnect": funded, "bad": funded, "gateway": funded, "broke": broke}
        rss_start = rss_mb(proc.pid)
        rss_warm: list[float] = []   # once every needed outcome was seen: buffers, caches and lazy imports touched
        out: list = []
        t0 = time.monotonic()

        def done() -> bool:
            now = time.monotonic() - t0
            seen = {f"{k} {o}" for k, o, _ in out}
            warm = all(n in seen for n in need)
            if warm and not rss_warm:
                rss_warm.append(rss_mb(proc.pid))
            return now > max_seconds or (now > seconds and warm)

        async def main():
            rng = random.Random(7)
            await asyncio.gather(*(client(kind, base, keys[kind], done, out, random.Random(rng.random()))
                                   for kind, n in clients.items() for _ in range(n)))
        asyncio.run(main())
        wall = time.monotonic() - t0
        rss_end = rss_mb(proc.pid)
        with Ledger(db) as ledger:
            # cancelled jobs settle a step after their client leaves: wait for the last rows, never a fixed time
            settle_by = time.monotonic() + 300
            count = "SELECT COUNT(*) FROM requests"
            while (ledger.invariant()["holds"] or ledger.engine.read(count)[0][0] < len(out)) \
                    and time.monotonic() < settle_by:
                time.sleep(0.05)
            inv = ledger.invariant()
            rows = ledger.engine.read("SELECT COUNT(*) FROM requests")[0][0]
    finally:
        proc.terminate()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    by_kind = collections.Counter(f"{k} {o}" for k, o, _ in out)
    ok_lat = sorted(lat for k, o, lat in out if k in ("stream", "gateway") and o == "200")

    def pct(p):
        return ok_lat[min(len(ok_lat) - 1, int(p * len(ok_lat)))] * 1000 if ok_lat else 0.0
    return {"seconds": round(wall, 1), "requests": len(out), "ledger_rows": rows, "outcomes": dict(by_kind),
            "server_errors": sum(n for k, n in by_kind.items() if k.split()[1].startswith("5")
                                 and not k.endswith("503")),
            "p50_ms": round(pct(0.50), 1), "p99_ms": round(pct(0.99), 1), "rss_start_mb": round(rss_start, 1),
            "rss_warm_mb": round(rss_warm[0] if rss_warm else rss_start, 1),
            "rss_end_mb": round(rss_end, 1), "ledger_invariant": inv, "exit_code": proc.returncode,
            "requests_per_s": round(len(out) / wall, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--parallel", type=int, default=4)
    args = ap.parse_args(argv)
    r = run(args.seconds, args.parallel)
    print(json.dumps(r, indent=2))
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak-latest.json").write_text(json.dumps(r, indent=2))
    return 0 if r["ledger_invariant"]["ok"] and not r["server_errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
