"""Every Retry-After follows one rule (``errors.retry_after``, docs/limits.md#retry-after): the value for each kind
of refusal, both dialects' headers equal to it, the senders' values, and no other module writing the header."""

from __future__ import annotations

from pathlib import Path

import pytest

from reverb.api.errors import gateway_body, openai_body
from reverb.backends.upstream import wire
from reverb.errors import (RETRY_BUSY, RETRY_GOING_AWAY, RETRY_UPSTREAM_MAX, RETRY_WAITED, InsufficientCredit,
                           InvalidRequest, LedgerError, OverloadedError, RateLimited, UpstreamError,
                           UpstreamRejected, retry_after)
from reverb.ledger import Ledger

CASES = [
    (OverloadedError("all slots are busy and the wait queue is full"), RETRY_BUSY),
    (OverloadedError("timed out waiting for a free slot", retry_after=RETRY_WAITED), RETRY_WAITED),
    (OverloadedError("the server is shutting down", retry_after=RETRY_GOING_AWAY), RETRY_GOING_AWAY),
    (LedgerError("the ledger could not record this request"), RETRY_GOING_AWAY),
    (RateLimited("60 requests per minute", retry_after=0.2), 1),      # rounded up, at least a second
    (RateLimited("60 requests per minute", retry_after=7.01), 8),
    (RateLimited("10 tokens per minute (this request alone reserves 11)", retry_after=None), None),
    (UpstreamRejected("slow down", status=429, retry_after=7), 7),
    (UpstreamRejected("slow down", status=429, retry_after=86_400), RETRY_UPSTREAM_MAX),
    (UpstreamRejected("bad field", status=400), None),
    (InvalidRequest("bad", param="n"), None),
    (InsufficientCredit("no credit"), None),
    (UpstreamError("the upstream failed"), None),
    (ValueError("not ours"), None),
]


def test_the_rule_values():
    assert (RETRY_BUSY, RETRY_WAITED, RETRY_GOING_AWAY, RETRY_UPSTREAM_MAX) == (1, 2, 5, 60)
    for error, seconds in CASES:
        assert retry_after(error) == seconds, error


@pytest.mark.parametrize("body", [openai_body, gateway_body])
def test_both_dialects_send_exactly_the_rule(body):
    for error, seconds in CASES:
        _, _, headers = body(error)
        assert headers.get("Retry-After") == (None if seconds is None else str(seconds)), error


def test_an_upstream_value_is_parsed_then_clamped_by_the_rule():
    for header, seconds in (("7", 7), ("99999", 60), ("Fri, 01 Jan 2100 00:00:00 GMT", 60), ("soon", None)):
        assert retry_after(wire.error_for(429, b"{}", "m", None, header)) == seconds


def test_a_concurrency_limit_says_busy(tmp_path):
    with Ledger(str(tmp_path / "ledger.sqlite3")) as led:
        led.lease.register(600)
        acct = led.authenticate(led.create_key("k", 100, max_parallel=1))
        led.reserve(acct, "a", 1, "m", "chat", tokens=1)
        with pytest.raises(RateLimited) as e:
            led.reserve(acct, "b", 1, "m", "chat", tokens=1)
    assert retry_after(e.value) == RETRY_BUSY


def test_no_other_module_writes_the_header():
    root = Path(__file__).resolve().parent.parent / "runtime"
    writers = {p.relative_to(root).as_posix() for p in root.rglob("*.py") if '["Retry-After"]' in p.read_text()}
    assert writers == {"api/errors.py"}
