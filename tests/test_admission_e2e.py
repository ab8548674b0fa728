"""Fair admission on a real server with the real model: issue 20's attack (one /v1/completions request of 32 prompts
x n choices from one key) no longer makes another key wait for the whole of it. Unit tests of the rule are in
test_admission.py."""

from __future__ import annotations

import statistics
import threading
import time

import pytest

from reverb.models import registry

from .conftest import ROOT, chat, wait_for
from .memory import PeakRss

SPEC = registry.load(ROOT / "models.toml").resolve("smollm2-135m")


def timed(srv, key: str, body: dict) -> tuple[float, str]:
    """(seconds to the whole answer, request id)."""
    with srv.client(key) as http:
        t = time.monotonic()
        r = http.post("/v1/chat/completions", json=body)
        took = time.monotonic() - t
    assert r.status_code == 200, r.text
    return took, r.headers["x-request-id"]


def billed_for_what_it_used(ledger, request_id: str) -> dict:
    row = ledger.request(request_id)
    assert row["status"] == "completed", row
    assert row["price"] == SPEC.cost(row["prompt_tokens"], row["completion_tokens"]), row
    return row


@pytest.mark.slow   # 384 tokens of attack: the figures docs/limits.md quotes
def test_one_request_of_many_prompts_cannot_starve_another_key(make_server, no_eos):
    srv = make_server("--parallel", "4", start=False)        # --slots-per-key defaults to 3
    with srv.ledger() as ledger:
        hog_key = ledger.create_key("hog", credit=10**9)
        victim_key = ledger.create_key("victim", credit=10**9)
    srv.start()
    small = chat("Say hi.", max_tokens=4, temperature=0)

    def quiet() -> float:
        return statistics.median(timed(srv, victim_key, small)[0] for _ in range(3))

    timed(srv, victim_key, small)                             # warm-up
    quiet_before = quiet()

    with srv.client(hog_key) as http:                         # one key cannot hold every slot
        r = http.post("/v1/completions", json={"model": "smollm2-135m", "prompt": ["x"], "n": 4, "max_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"

    attack = {"model": "smollm2-135m", "prompt": [f"Write about the number {i}." for i in range(32)], "n": 3,
              "max_tokens": 4, "logit_bias": no_eos}   # issue 20's shape; 4 tokens a choice, not 16, is enough:
    # 96 choices through 3 slots are still 32 rounds, each longer than a victim's whole request
    result: dict = {}

    def hog():
        with srv.client(hog_key) as http:
            t = time.monotonic()
            result["response"] = http.post("/v1/completions", json=attack)
            result["took"] = time.monotonic() - t

    with PeakRss(srv.proc.pid) as rss:
        thread = threading.Thread(target=hog)
        thread.start()
        try:
            wait_for(lambda: srv.stats()["waiting"] > 0 and srv.stats()["active"] == 3,
                     what="the attack holding its slots with more waiting")
            under = [timed(srv, victim_key, small) for _ in range(5)]
            waiting_after = srv.stats()["waiting"]
        finally:
            thread.join()
    quiet_after = quiet()

    r = result["response"]
    assert r.status_code == 200, r.text
    print(f"\nquiet {quiet_before:.3f}/{quiet_after:.3f} s, under attack {[round(t, 3) for t, _ in under]} s, "
          f"attack {result['took']:.1f} s, {rss.report()}")    # the figures docs/limits.md quotes
    assert waiting_after > 0                                   # the victim was served while the attack still queued
    quiet_time = max(quiet_before, quiet_after)
    under_time = statistics.median(t for t, _ in under)
    # Strict FIFO made the victim wait for the whole attack (40.8 s against 0.13 s quiet in the issue).
    # Now it shares the batch with the attack's slots: a small multiple on a busy 2-core machine.
    assert under_time < 10 * quiet_time, (under_time, quiet_time, result["took"])
    assert under_time < result["took"] / 4, (under_time, result["took"])
    assert rss.grew_mb < 128, rss.report()

    # every request billed for what it used
    body = r.json()
    assert len(body["choices"]) == 96 and all(c["finish_reason"] == "length" for c in body["choices"])
    with srv.ledger() as ledger:
        row = billed_for_what_it_used(ledger, r.headers["x-request-id"])
        assert row["completion_tokens"] == 96 * 4 and row["prompt_tokens"] == body["usage"]["prompt_tokens"]
        for _, request_id in under:
            assert 0 < billed_for_what_it_used(ledger, request_id)["completion_tokens"] <= 4
        assert ledger.invariant()["ok"]
