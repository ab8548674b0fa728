"""The drafts section's memory-bound row: predicted outputs on a model too big for the CPU's caches.

The tiny model is compute-bound on 2 cores: a step's cost grows with its rows, so a 16-token draft costs nearly 16
steps. On a model whose weights do not fit in cache (a 7B model on a laptop, here a synthetic ~1B one) a step is
mostly reading the weights once, and a step with a draft's rows costs little more than a step with one row.

The model is ``convert/synthetic.py``'s "1b" preset (random weights, byte-level vocabulary: ASCII text is one token
per byte) converted to Q8_0 by ``convert/hf_to_gguf.py``, built once into ``~/.cache/reverb/synthetic/`` (keyed by
the generator's source and arguments) and reused. The workload is an edit whose prediction is entirely right: the
model's own greedy answer of N tokens (end tokens and every token but printable ASCII and newline banned, so the
answer's text tokenizes back to the same tokens), then the same request with ``prediction`` = that answer. reverb
without and with the prediction, llama-server (no predicted outputs) without, one stream, greedy, interleaved
rounds with the order rotated; decode tokens per second (first to last token), medians. ``--quick``: the tiny
preset, 32 tokens, one round.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

from convert import hf_to_gguf, synthetic

from . import peers
from .drafts import one
from .load import p50

CACHE = Path(os.environ.get("REVERB_SYNTHETIC_CACHE") or Path.home() / ".cache" / "reverb" / "synthetic")
SEED, DTYPE, OUTTYPE = 0, "bf16", "q8_0"
PROMPT = "Write out the configuration file for the lighthouse's lamp controller again, unchanged."
ALLOWED = {10, *range(32, 127)}   # newline and printable ASCII: byte tokens whose text tokenizes back to them


def model(preset: str) -> Path:
    """The synthetic GGUF for ``preset``, built (a minute or two for 1b on 2 cores) when it is not in the cache."""
    shape = synthetic.PRESETS[preset]
    source = Path(synthetic.__file__).read_bytes() + Path(hf_to_gguf.__file__).read_bytes()
    key = hashlib.sha256(json.dumps([repr(shape), SEED, DTYPE, OUTTYPE, synthetic.BYTE_MERGES]).encode()
                         + source).hexdigest()[:12]
    path = CACHE / f"qwen2-{preset}-{key}.gguf"
    if path.exists():
        return path
    n = synthetic.parameters(shape, synthetic.BYTE_MERGES)
    print(f"building the synthetic {preset} model ({n / 1e6:,.0f}M parameters, {OUTTYPE}) into {path}: random "
          f"weights, then the HF -> GGUF conversion; about 2 minutes for 1b on 2 cores, once", file=sys.stderr,
          flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    for stale in CACHE.glob(f"qwen2-{preset}-*.gguf"):   # built by an older generator or converter
        stale.unlink()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="build-") as tmp:
        synthetic.write(Path(tmp) / "hf", shape, SEED, DTYPE, shards=1, merges=synthetic.BYTE_MERGES)
        hf_to_gguf.convert(Path(tmp) / "hf", path, OUTTYPE)
    print(f"built {path.name} ({path.stat().st_size / 1e6:.0f} MB) in {time.monotonic() - t0:.0f} s",
          file=sys.stderr, flush=True)
    return path


def describe(preset: str, path: Path) -> dict:
    shape = synthetic.PRESETS[preset]
    return {"preset": preset, "file": path.name, "bytes": path.stat().st_size, "quant": OUTTYPE.upper(),
            "parameters": synthetic.parameters(shape, synthetic.BYTE_MERGES),
            "shape": f"hidden {shape.hidden}, ffn {shape.ffn}, {shape.layers} layers, {shape.heads} heads / "
                     f"{shape.kv_heads} kv, byte vocabulary"}


def measure(tmp: Path, args, quick: bool = False) -> dict:
    """{"model": ..., "runs": {label: [tok/s per round]}, "details": [...], "same_answer": bool, ...}."""
    preset = "tiny" if quick else "1b"
    tokens, rounds = (32, 1) if quick else (128, args.rounds)
    path = model(preset)
    started = []
    try:
        started.append(peers.reverb(tmp, "reverb", args.threads, 1, 1024, ["--model", str(path)]))
        if args.llama_server:
            started.append(peers.llama_server(tmp, args.llama_server, path, args.threads, 1, 1024))
        by = {p.label: p for p in started}
        name = httpx.get(by["reverb"].base + "/v1/models",
                         headers={"Authorization": f"Bearer {by['reverb'].key}"}).json()["data"][0]["id"]
        n_vocab = len(synthetic.vocab(synthetic.BYTE_MERGES)) + len(synthetic.SPECIAL)
        ban = {str(t): -100 for t in range(n_vocab) if t not in ALLOWED}
        plain = {"model": name, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": tokens,
                 "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, "logit_bias": ban}
        for p in started:   # warm-up: weights paged in, first-call costs paid
            one(p, {**plain, "max_tokens": 4})
        reference = one(by["reverb"], plain)
        answer = reference["text"]
        predicted = {**plain, "prediction": {"type": "content", "content": answer}}
        plan = [("reverb", "reverb", plain), ("reverb + prediction", "reverb", predicted)]
        plan += [("llama-server", "llama-server", plain)] if "llama-server" in by else []
        out: dict = {"model": describe(preset, path), "tokens": tokens, "rounds": rounds, "quick": quick,
                     "runs": {}, "details": [],
                     "answer": {"tokens": reference["tokens"], "distinct": len(set(answer)), "start": answer[:80]},
                     "same_answer": True}
        for rnd in range(rounds):
            for label, server, b in plan[rnd % len(plan):] + plan[:rnd % len(plan)]:
                got = one(by[server], b)
                out["runs"].setdefault(label, []).append(got["tps"])
                if label == "reverb + prediction":
                    out["details"].append(got["details"])
                if server == "reverb":
                    out["same_answer"] = out["same_answer"] and got["text"] == answer
                print(f"  round {rnd + 1} membound {label:<22} {got['tps']:.1f} tok/s ({got['tokens']} tokens)",
                      flush=True)
        return out
    finally:
        for p in started:
            p.stop()


def report(r: dict) -> None:
    m = r["model"]
    runs = r["runs"]
    a, b, c = (p50(runs.get(k, [])) for k in ("reverb", "reverb + prediction", "llama-server"))
    acc = p50([d.get("accepted_prediction_tokens", 0) for d in r["details"]])
    rej = p50([d.get("rejected_prediction_tokens", 0) for d in r["details"]])
    size = f"{m['parameters'] / 1e9:.2f}B" if m["parameters"] >= 1e8 else f"{m['parameters'] / 1e6:.1f}M"
    print(f"\nmemory-bound row: synthetic Qwen2 {size} ({m['preset']}: {m['shape']}), "
          f"{m['quant']}, {m['bytes'] / 1e6:.0f} MB; {r['tokens']} tokens, prediction = the model's own greedy "
          f"answer; medians of {r['rounds']} interleaved rounds (decode tok/s)"
          + ("; --quick: a check, not a measurement" if r.get("quick") else "") + "\n")
    print(f"  llama-server {c:.1f}" if c else "  llama-server -", end="")
    print(f"   reverb without {a:.1f}   reverb with {b:.1f}   gain " + (f"{b / a:.2f}x" if a else "-")
          + f"   same answer {'yes' if r['same_answer'] else 'NO'}")
    print(f"  prediction tokens accepted {acc:.0f}, rejected {rej:.0f} (medians); the answer: "
          f"{r['answer']['tokens']} tokens, {r['answer']['distinct']} distinct characters, "
          f"starting {r['answer']['start']!r}")
