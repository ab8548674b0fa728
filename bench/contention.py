"""One stream's decode speed while busy loops take cores beside the server (`python -m bench --only contention`).

The servers and the busy loops share the same ``--threads`` cores (this process pins itself to them, and what it
starts inherits that): 0, 1 and 2 busy loops, each pinned to one of those cores in turn, so "one busy loop" means
one of the servers' two cores taken on any machine. At each level every server gets one unmeasured request first
(reverb's thread count settles on the CPU it gets, as it has on a server that has been running beside that work),
then ``--rounds`` rounds of one stream of ``--tokens`` tokens each, the order rotated each round; medians are
reported with their ratio to the same server's quiet speed. Servers: reverb with its default (the thread count
follows the CPU it gets), reverb with a fixed ``--threads N`` (what the default used to be) and llama.cpp's
llama-server with ``-t N``. Writes bench/results/contention-latest.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from . import peers, workloads
from .load import p50

LEVELS = (0, 1, 2)
BUSY_LOOP = "import os, sys\nos.sched_setaffinity(0, {%d})\nprint('spinning', flush=True)\nwhile True:\n    pass\n"


def busy_loops(n: int, cores: list[int]) -> list[subprocess.Popen]:
    """``n`` busy loops, the i-th pinned to ``cores[i % len(cores)]``; returns once each of them spins."""
    loops = []
    try:
        for i in range(n):
            p = subprocess.Popen([sys.executable, "-c", BUSY_LOOP % cores[i % len(cores)]], stdout=subprocess.PIPE,
                                 text=True)
            loops.append(p)
            if p.stdout.readline().strip() != "spinning":
                raise RuntimeError("a busy loop did not start")
    except BaseException:
        stop(loops)
        raise
    return loops


def stop(loops: list[subprocess.Popen]) -> None:
    for p in loops:
        p.kill()
        p.wait()


def threads_now(peer) -> int | None:
    """The decode thread count a reverb server reports (its reverb_threads gauge); None for other servers."""
    if not peer.label.startswith("reverb"):
        return None
    text = httpx.get(peer.base + "/metrics", headers={"Authorization": f"Bearer {peer.key}"}, timeout=30).text
    for line in text.splitlines():
        if line.startswith("reverb_threads{"):
            return int(float(line.rsplit(" ", 1)[1]))
    return None


def measure(args, model: Path, eog: list[int]) -> dict:
    cores = sorted(os.sched_getaffinity(0))[:args.threads]
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cores))
    tmp = Path(tempfile.mkdtemp(prefix="reverb-bench-contention-"))
    servers: list = []
    n = len(cores)
    try:
        extra = args.serve_args.split()
        servers.append(peers.reverb(tmp, "reverb (default)", 0, 1, args.ctx, extra))
        servers.append(peers.reverb(tmp, f"reverb --threads {n}", n, 1, args.ctx, extra))
        if args.llama_server:
            servers.append(peers.llama_server(tmp, args.llama_server, model, n, 1, args.ctx))
        else:
            print("no llama-server binary (make bench builds one): reverb rows only", file=sys.stderr)
        out: dict = {"cores": cores, "tokens": args.tokens, "rounds": args.rounds, "levels": list(LEVELS),
                     "runs": {s.label: {} for s in servers}, "threads_after": {s.label: {} for s in servers}}
        for level in LEVELS:
            loops = busy_loops(level, cores)
            try:
                for s in servers:
                    workloads.single_stream(s, eog, args.tokens)  # settle (and warm up)
                for rnd in range(args.rounds):
                    order = servers[rnd % len(servers):] + servers[:rnd % len(servers)]
                    for s in order:
                        got = workloads.single_stream(s, eog, args.tokens)["decode_tps"]
                        out["runs"][s.label].setdefault(str(level), []).append(got)
                        th = threads_now(s)
                        out["threads_after"][s.label].setdefault(str(level), []).append(th)
                        print(f"  {level} busy loop(s), round {rnd + 1}: {s.label:<22} {got:7.1f} tok/s"
                              + (f" ({th} thread{'s' if th != 1 else ''} after)" if th is not None else ""),
                              flush=True)
            finally:
                stop(loops)
        return out
    finally:
        for s in servers:
            s.stop()
        os.sched_setaffinity(0, mine)
        shutil.rmtree(tmp, ignore_errors=True)


def rows(result: dict) -> list[tuple[str, ...]]:
    """Table rows: server, then per level its median tok/s and the ratio to its own quiet median."""
    lines = [("server", *[f"{lv} busy loop{'s' if lv != 1 else ''}" for lv in result["levels"]])]
    for label, runs in result["runs"].items():
        quiet = p50(runs.get("0", []))
        cells = []
        for lv in result["levels"]:
            med = p50(runs.get(str(lv), []))
            th = [t for t in result["threads_after"][label].get(str(lv), []) if t is not None]
            note = "" if not th else f", {th[0]} thr" if min(th) == max(th) else f", {min(th)}-{max(th)} thr"
            cells.append(f"{med:.1f}" if lv == 0 else f"{med:.1f} ({med / quiet if quiet else 0:.2f}x{note})")
        lines.append((label, *cells))
    return lines


def report(result: dict, model_name: str, cpu: dict) -> None:
    print(f"\n{model_name}: one stream's decode tok/s, {result['tokens']} tokens, medians of {result['rounds']} rounds;"
          f" servers and busy loops on cores {result['cores']}; {cpu.get('model', '?')}\n")
    lines = rows(result)
    widths = [max(len(r[i]) for r in lines) for i in range(len(lines[0]))]
    for r in lines:
        print("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))


def main(args, model: Path, cpu: dict) -> int:
    from .raw import Raw
    raw = Raw(model, 1, n_seq=1)
    eog = raw.eog_tokens()
    raw.close()
    result = measure(args, model, eog)
    result["machine"] = cpu
    report(result, model.name, cpu)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "contention-latest.json").write_text(json.dumps(result, indent=2))
    print(f"\nwritten: {args.out / 'contention-latest.json'}")
    return 0
