"""The workloads of the side-by-side table (issue #16), each run against one server through its OpenAI API.

Every request bans the end-of-generation tokens (logit_bias), so each stream makes exactly the tokens asked for,
and uses temperature 0. "Unique" prompts carry a fresh nonce at the start, so no cache can serve them.
"""

from __future__ import annotations

import asyncio
import secrets

from .load import p50, run_load, steady_tps

MODEL = "smollm2-135m"
USER = "Write a long story about a lighthouse keeper and the sea."
FILLER = ("The harbour records list every vessel that passed the point, its cargo, its crew and the weather of the "
          "day, kept in a neat hand by the keeper through forty winters. ")


def body(eog: list[int], tokens: int, user: str = USER, system: str = "", history: list | None = None) -> dict:
    msgs = [{"role": "system", "content": system}] if system else []
    msgs += (history or []) + [{"role": "user", "content": user}]
    return {"model": MODEL, "messages": msgs, "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "logit_bias": {str(t): -100 for t in eog}}


def nonce() -> str:
    return secrets.token_hex(6)


def run(peer, bodies: list[dict]):
    return asyncio.run(run_load(peer.base, peer.key, bodies))


def checked(results) -> None:
    bad = [r.error for r in results if r.error]
    if bad:
        raise RuntimeError(f"requests failed: {bad[:3]}")


def warm_up(peer, eog) -> None:
    run(peer, [body(eog, 4)])


def single_stream(peer, eog, tokens: int) -> dict:
    """One stream, short prompt: decode tokens/s after the first token."""
    _, (r,) = run(peer, [body(eog, tokens, system=nonce())])
    checked([r])
    return {"decode_tps": r.decode_tps, "ttft_ms": r.ttft * 1000}


def eight_streams(peer, eog, tokens: int, unique: bool, n: int = 8, strict: bool = True) -> dict:
    """``n`` streams at once (the same prompt, or each its own): aggregate tokens/s over the wall time. Not
    ``strict``: failed streams are counted (llama-cpp-python's server drops concurrent streams) instead of raising."""
    bodies = [body(eog, tokens, system=nonce() if unique else "") for _ in range(n)]
    tps, results = run(peer, bodies)
    if strict:
        checked(results)
    short = sum(1 for r in results if r.tokens < tokens or r.error)
    return {"aggregate_tps": tps, "short": short}


def long_prompt(peer, eog, tokens: int = 64, repeat: int = 38) -> dict:
    """A ~1,300-token unique prompt: time to first token, then the decode gap (inter-token latency p50)."""
    _, (r,) = run(peer, [body(eog, tokens, system=nonce() + " " + FILLER * repeat, user="Summarize the records.")])
    checked([r])
    return {"ttft_ms": r.ttft * 1000, "itl_ms": r.itl_p50 * 1000}


def long_streams(peer, eog, n: int = 8, repeat: int = 17, tokens: int = 96) -> dict:
    """``n`` streams after unique ~600-token prompts: the aggregate decode rate while all of them generate."""
    bodies = [body(eog, tokens, system=nonce() + " " + FILLER * repeat, user="Summarize the records.")
              for _ in range(n)]
    _, results = run(peer, bodies)
    checked(results)
    return {"steady_tps": steady_tps(results)}


def chats(peer, eog, n: int = 8, system_repeat: int = 12, answer: int = 32) -> dict:
    """``n`` concurrent chats: a first turn each (a unique ~400-token system prompt), then ``n`` other requests
    that take every slot, then everyone's second turn at once. Returns the second turns' TTFT p50: a server
    that kept the first turns (in host memory) does not recompute them."""
    systems = [nonce() + " " + FILLER * system_repeat for _ in range(n)]
    question = "What did the keeper write about the storm?"
    _, first = run(peer, [body(eog, answer, user=question, system=s) for s in systems])
    checked(first)
    _, others = run(peer, [body(eog, 8, system=nonce() + " " + FILLER * 3) for _ in range(n)])
    checked(others)
    second = [body(eog, answer, user="And what did he do the morning after?", system=s,
                   history=[{"role": "user", "content": question}, {"role": "assistant", "content": r.text}])
              for s, r in zip(systems, first, strict=True)]
    _, turn2 = run(peer, second)
    checked(turn2)
    return {"turn1_ttft_ms": p50([r.ttft * 1000 for r in first]), "turn2_ttft_ms": p50([r.ttft * 1000 for r in turn2])}
