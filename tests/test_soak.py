"""A short soak of mixed clients (streams, disconnects, bad requests, an exhausted key, gateway calls) against a
real server; `make soak` runs the long one whose numbers are in docs/operations.md."""

from __future__ import annotations

import pytest

from bench.soak import run

pytestmark = [pytest.mark.model, pytest.mark.slow]  # starts servers or loads models: the slow tier


def test_soak_holds_up():
    r = run(seconds=12, parallel=4, need=("stream 200", "gateway 200", "disconnect disconnect", "broke 402",
                                          "bad 400"),
            serve_args=("--prompt-cache-mb", "16"))  # the host prompt cache fills to its bound by design
    o = r["outcomes"]
    assert r["server_errors"] == 0 and not [k for k in o if "client-error" in k or "truncated" in k], o
    assert o.get("stream 200", 0) > 0 and o.get("gateway 200", 0) > 0
    assert o.get("disconnect disconnect", 0) > 0
    assert o.get("broke 402", 0) > 0 and o.get("bad 400", 0) > 0
    assert r["ledger_rows"] == r["requests"]  # every request, refused ones included, has its ledger row
    assert r["ledger_invariant"]["ok"] and r["ledger_invariant"]["holds"] == 0
    # a leak, not the first touch of buffers or a cache filling to its bound: growth after every kind of request has
    # run once, with a 16 MB prompt cache
    assert r["rss_end_mb"] - r["rss_warm_mb"] < 100, (r["rss_start_mb"], r["rss_warm_mb"], r["rss_end_mb"])
    assert r["exit_code"] == 0  # SIGTERM drained cleanly
