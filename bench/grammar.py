"""Decode speed with a JSON-schema grammar against without, side by side (a section of `make bench`).

The same prompt and model, greedy, end tokens banned, ``--tokens`` tokens per stream; plain and constrained runs
alternate, round by round, so machine noise hits both alike, and medians are reported. The schema (an object holding
an array of exactly 100 short strings) keeps the answer going past ``--tokens``, so both sides decode as many tokens.
``python -m bench --only grammar`` runs just this section against its own server.
"""

from __future__ import annotations

import asyncio
import secrets

from .load import p50, run_load

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["words"],
          "properties": {"words": {"type": "array", "minItems": 100, "maxItems": 100,
                                   "items": {"type": "string", "maxLength": 12}}}}
USER = "List one hundred words about the sea."


def body(n_tokens: int, eog: list[int], grammar: bool) -> dict:
    b = {"model": "smollm2-135m", "max_tokens": n_tokens, "temperature": 0, "stream": True,
         "stream_options": {"include_usage": True}, "logit_bias": {str(t): -100 for t in eog},
         "messages": [{"role": "system", "content": secrets.token_hex(4)},  # no prefix reuse between runs
                      {"role": "user", "content": USER}]}
    if grammar:
        b["response_format"] = {"type": "json_schema", "json_schema": {"name": "words", "schema": SCHEMA}}
    return b


def measure(base: str, key: str, n_tokens: int, eog: list[int], rounds: int, streams: tuple[int, ...] = (1, 4)) -> dict:
    """{streams: {plain_tps, grammar_tps, slowdown}}: decode tok/s per stream (first to last token), medians."""
    asyncio.run(run_load(base, key, [body(8, eog, True)]))  # warm-up
    out = {}
    for c in streams:
        runs: dict[str, list[float]] = {"plain": [], "grammar": []}
        for _ in range(rounds):
            for kind in ("plain", "grammar"):
                _, results = asyncio.run(run_load(base, key, [body(n_tokens, eog, kind == "grammar")
                                                              for _ in range(c)]))
                runs[kind].append(p50([r.decode_tps for r in results]))
        plain, grammar = p50(runs["plain"]), p50(runs["grammar"])
        out[c] = {"plain_tps": plain, "grammar_tps": grammar, "slowdown": 1 - grammar / plain if plain else 0.0,
                  "rounds": runs}
    return out


def rows(result: dict) -> list[tuple[str, str, str]]:
    return [(f"decode per stream, {c} stream(s): plain / JSON-schema grammar (tok/s)",
             f"{r['plain_tps']:.1f} / {r['grammar_tps']:.1f}", f"{100 * r['slowdown']:.1f}% slower (aim <= 15%)")
            for c, r in result.items()]
