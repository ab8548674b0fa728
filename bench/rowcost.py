"""What one decode step of k rows costs against one row, in process (no HTTP, no runtime code): the figure behind
how much a draft can gain (docs/predicted-outputs.md, "What it gains").

    python -m bench.rowcost MODEL.gguf [--threads 2]

One ``llama_decode`` of k rows (every row with logits) after a 100-token prefix, the prefix decoded afresh each time;
medians of 7.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import llama_cpp as C

from .raw import Raw

ROWS = (1, 2, 4, 8, 16, 17)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.rowcost")
    ap.add_argument("model", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    raw = Raw(args.model, args.threads, n_seq=1)
    prefix = [raw.tokenize("x")[0]] * 100
    ms = {}
    for k in ROWS:
        times = []
        for _ in range(7):
            C.llama_memory_clear(raw.mem, True)
            raw._decode([(t, i, 0, False) for i, t in enumerate(prefix)])
            t0 = time.perf_counter()
            raw._decode([(prefix[0], 100 + j, 0, True) for j in range(k)])
            C.llama_synchronize(raw.ctx)
            times.append((time.perf_counter() - t0) * 1000)
        ms[k] = statistics.median(times)
    raw.close()
    print(f"{args.model.name}, {args.threads} threads: " + ", ".join(f"{k} rows {v:.1f} ms" for k, v in ms.items()))
    print(f"a draft row costs {(ms[17] - ms[1]) / 16 / ms[1]:.2f} of a one-row step; 17 rows cost "
          f"{ms[17] / ms[1]:.1f} one-row steps")


if __name__ == "__main__":
    main()
