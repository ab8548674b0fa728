"""`make bench-ledger`: reserve+settle latency on each ledger engine. Run by hand; never a timed test.

For each engine: ``--pairs`` sequential reserve+settle pairs from one process (p50 / p99 of the pair), then the same
work from two ledgers on one database (two "servers") with ``--threads`` threads each, as pairs per second; once
with a plain key and once (``limits``) with a key in a team where both have requests- and tokens-per-minute limits,
a concurrency limit and a monthly budget (none of them reached), so every check runs. SQLite
runs on a file in a temp dir (WAL, synchronous=FULL); PostgreSQL on a throwaway local server with fsync on
(``--pg URL`` uses an existing database instead). Results go to stdout and bench/results/ledger-latest.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reverb.ledger import Ledger, RequestRecord  # noqa: E402


def pair(ledger: Ledger, account, rid: str) -> float:
    t0 = time.perf_counter()
    ledger.reserve(account, rid, 1000, "m", "gateway", prompt_tokens=20, prices=(100_000, 200_000))
    ledger.settle(account, RequestRecord(rid, "gateway", "m", "completed", 20, 30), 8)
    return time.perf_counter() - t0


BIG = 10**9
LIMITS = dict(rpm=BIG, tpm=BIG, max_parallel=BIG, budget=10**14, period="month")


def measure(target: str, pairs: int, threads: int, limits: bool = False) -> dict:
    with Ledger(target) as a, Ledger(target) as b:
        for led in (a, b):
            led.lease.register(60)
        name = f"bench-{time.time_ns()}"
        if limits:
            a.create_team(name, 10**12, **LIMITS)
        account = a.authenticate(a.create_key(name, 10**12, **(dict(LIMITS, team=name) if limits else {})))
        for i in range(20):   # warm up connections and caches
            pair(a, account, f"warm-{i}-{time.time_ns()}")
        lat = sorted(pair(a, account, f"seq-{i}-{time.time_ns()}") for i in range(pairs))
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(2 * threads) as pool:
            list(pool.map(lambda i: pair(a if i % 2 else b, account, f"par-{i}-{time.time_ns()}"), range(pairs)))
        wall = time.perf_counter() - t0
        assert a.invariant()["ok"], a.invariant()
        for led in (a, b):
            led.lease.retire()
    return {"pairs": pairs, "p50_ms": round(statistics.median(lat) * 1000, 2),
            "p99_ms": round(lat[int(0.99 * (len(lat) - 1))] * 1000, 2),
            "two_ledgers_pairs_per_s": round(pairs / wall, 1), "threads_per_ledger": threads}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=500, help="reserve+settle pairs per measurement (default 500)")
    ap.add_argument("--threads", type=int, default=4, help="threads per ledger in the two-ledger run (default 4)")
    ap.add_argument("--pg", help="an existing PostgreSQL database URL (default: start a throwaway server)")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["sqlite"] = measure(str(Path(tmp) / "bench.sqlite3"), args.pairs, args.threads)
        print("sqlite    ", results["sqlite"], flush=True)
        results["sqlite_limits"] = measure(str(Path(tmp) / "bench.sqlite3"), args.pairs, args.threads, True)
        print("sqlite     limits", results["sqlite_limits"], flush=True)
    server = None
    try:
        url = args.pg
        if url is None:
            from tests.pgserver import PgServer, find_bindir
            bindir = find_bindir()
            if bindir is None:
                print("postgresql: server binaries not found (apt-get install postgresql); skipped")
            else:
                server = PgServer(bindir, fsync=True).start()
                url = server.new_database()
        if url:
            results["postgresql"] = measure(url, args.pairs, args.threads)
            print("postgresql", results["postgresql"], flush=True)
            results["postgresql_limits"] = measure(url, args.pairs, args.threads, True)
            print("postgresql limits", results["postgresql_limits"], flush=True)
    finally:
        if server is not None:
            server.stop()
    results["load_average"] = os.getloadavg()
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "ledger-latest.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
