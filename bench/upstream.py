"""`python -m bench.upstream`: what reverb adds in front of an upstream engine.

The upstream is the tests' scripted one (``tests/misbehaving_upstream.py``, its ``echo`` model: no model compute,
so only the proxy's own cost shows). Alternating rounds measure, directly and through a `reverb serve` in front of
it: the latency of a small non-streaming request (p50), and the event rate of one long stream. Traffic stays on
127.0.0.1; every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.misbehaving_upstream import Upstream  # noqa: E402

KEY, UP_KEY = "sk-bench", "sk-bench-upstream"


def start_gateway(tmp: Path, upstream_url: str) -> tuple[subprocess.Popen, str]:
    toml = tmp / "models.toml"
    toml.write_text(f'default = "up"\n[models.up]\nsource = "openai"\nbase_url = "{upstream_url}"\nmodel = "echo"\n'
                    f'api_key_env = "BENCH_UP_KEY"\nctx = 65536\nprice_input = "1"\nprice_output = "1"\n')
    ready = tmp / "ready"
    proc = subprocess.Popen([sys.executable, "-m", "reverb.cli", "serve", "--port", "0", "--catalogue", str(toml),
                             "--db", str(tmp / "ledger.sqlite3"), "--api-key", KEY, "--ready-file", str(ready)],
                            cwd=ROOT, env={**os.environ, "BENCH_UP_KEY": UP_KEY}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("the gateway did not start")
        time.sleep(0.05)
    return proc, ready.read_text().strip()


def latency(http: httpx.Client, url: str, key: str, model: str, n: int) -> float:
    body = {"model": model, "messages": [{"role": "user", "content": " ".join(["word"] * 32)}], "max_tokens": 32}
    times = []
    for _ in range(n):
        t = time.perf_counter()
        r = http.post(url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
        r.raise_for_status()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def stream_rate(http: httpx.Client, url: str, key: str, model: str, words: int) -> float:
    body = {"model": model, "stream": True, "max_tokens": words,
            "messages": [{"role": "user", "content": " ".join(["word"] * words)}]}
    events = 0
    t = time.perf_counter()
    with http.stream("POST", url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}) as r:
        for line in r.iter_lines():
            events += line.startswith("data: {")
    return events / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--words", type=int, default=2000)
    args = ap.parse_args()
    up = Upstream()
    with tempfile.TemporaryDirectory() as tmp:
        proc, base = start_gateway(Path(tmp), up.url)
        try:
            results: dict[str, list[float]] = {k: [] for k in ("direct_ms", "via_ms", "direct_ev", "via_ev")}
            with httpx.Client(timeout=120) as http:
                latency(http, base + "/v1", KEY, "up", 3)  # warm the pool
                for _ in range(args.rounds):
                    results["direct_ms"].append(latency(http, up.url, UP_KEY, "echo", args.requests))
                    results["via_ms"].append(latency(http, base + "/v1", KEY, "up", args.requests))
                    results["direct_ev"].append(stream_rate(http, up.url, UP_KEY, "echo", args.words))
                    results["via_ev"].append(stream_rate(http, base + "/v1", KEY, "up", args.words))
        finally:
            proc.terminate()
            proc.wait(60)
            up.close()
    med = {k: statistics.median(v) for k, v in results.items()}
    med["added_ms"] = med["via_ms"] - med["direct_ms"]
    print(json.dumps({k: round(v, 2) for k, v in med.items()}, indent=1))


if __name__ == "__main__":
    main()
