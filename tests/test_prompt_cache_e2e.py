"""Cached prompt prefixes through a real server: never reused across API keys unless --share-prompt-cache, and a
conversation pushed out of its slot comes back from host memory with the same answer a cold run gives."""

from __future__ import annotations

import re

from .conftest import KEY

OTHER = "sk-test-other-key"
SYSTEM = "Internal note: the vault code is 4812 and the courier arrives on Tuesday. " * 8    # ~140 tokens


def body(question: str, system: str = SYSTEM, max_tokens: int = 1, **kw) -> dict:
    """One token where only the cache counts; a test that compares answers asks for more."""
    return {"model": "smollm2-135m", "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}], **kw}


def ask(srv, b: dict, key: str = KEY) -> tuple[dict, int]:
    """The answer and how many of its prompt tokens came from a cache."""
    before = srv.stats()["reused"]
    with srv.client(key=key) as http:
        r = http.post("/v1/chat/completions", json=b)
    assert r.status_code == 200, r.text
    return r.json(), srv.stats()["reused"] - before


def metric(srv, name: str) -> float:
    with srv.client() as http:
        text = http.get("/metrics").text
    return float(re.search(rf'^{name}\{{model="smollm2-135m"\}} (\S+)$', text, re.M).group(1))


def test_a_second_key_never_gets_another_keys_cached_prefix(make_server):
    srv = make_server("--parallel", "2", "--api-key", OTHER)
    ask(srv, body("What is the code?"))
    _, reused = ask(srv, body("What is the code?"), key=OTHER)       # the very same prompt, another key
    assert reused == 0
    _, reused = ask(srv, body("When does the courier come?"))        # the first key still has its prefix
    assert reused > 100


def test_a_shared_prompt_cache_serves_every_key(make_server):
    srv = make_server("--parallel", "2", "--api-key", OTHER, "--share-prompt-cache")
    ask(srv, body("What is the code?"))
    _, reused = ask(srv, body("When does the courier come?"), key=OTHER)
    assert reused > 100


def test_the_next_turn_comes_back_from_host_memory(make_server):
    srv = make_server("--parallel", "1", "--deterministic")
    first, _ = ask(srv, body("Tell me about the courier.", max_tokens=8))
    history = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Tell me about the courier."},
               {"role": "assistant", "content": first["choices"][0]["message"]["content"]},
               {"role": "user", "content": "And the vault?"}]
    ask(srv, body("Write a poem about autumn.", system="You are a poet. " * 8, max_tokens=2))  # takes the only slot
    assert metric(srv, "reverb_prompt_cache_entries") == 1 and metric(srv, "reverb_prompt_cache_bytes") > 0
    warm, reused = ask(srv, {**body("", max_tokens=8), "messages": history})
    assert reused >= first["usage"]["prompt_tokens"] - 64               # at least the first turn's prompt
    # cold: another key on the same server (a prefix is reused for its own key only)
    cold, reused = ask(srv, {**body("", max_tokens=8), "messages": history}, key=srv.new_key())
    assert reused == 0
    assert warm["choices"][0]["message"]["content"] == cold["choices"][0]["message"]["content"]
