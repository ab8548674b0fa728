"""Bounded embeddings on a real server with the real model (issue 20, item 3): caps on inputs and tokens (400 naming
``input``), a bounded queue (503 with Retry-After), work in chunks that stops when the client leaves and when the
server stops, billed for the tokens computed; another key's chat stays prompt and memory stays bounded meanwhile."""

from __future__ import annotations

import json
import signal
import socket
import statistics
import time
from urllib.parse import urlsplit

from reverb.ledger import Ledger
from reverb.models import registry

from .conftest import ROOT, chat, wait_for
from .memory import PeakRss

SPEC = registry.load(ROOT / "models.toml").resolve("smollm2-135m")
MODEL = "smollm2-135m"


def sized_input(engine, tokens: int) -> str:
    """A text the server reads as exactly ``tokens`` tokens (BOS included when the model adds one)."""
    bos = 1 if engine.add_bos() else 0

    def size(n: int) -> int:
        return len(engine.tokenize(" apple" * n, special=False)) + bos
    n = tokens - bos   # a guess (one token per word), then corrected: a few tokenizations, not thousands
    while size(n) > tokens:
        n -= 1
    while size(n) < tokens:
        n += 1
    assert size(n) == tokens
    return " apple" * n


def send_raw(srv, key: str, body: dict) -> socket.socket:
    """POST /v1/embeddings on a raw socket and return it unread (the caller leaves by closing it)."""
    url = urlsplit(srv.base_url)
    data = json.dumps(body).encode()
    sock = socket.create_connection((url.hostname, url.port))
    sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: " + url.netloc.encode() + b"\r\nAuthorization: Bearer "
                 + key.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: "
                 + str(len(data)).encode() + b"\r\n\r\n" + data)
    return sock


def the_hold(srv) -> str:
    """The request id of the one open hold (the raw request, computing)."""
    def one():
        with srv.ledger() as ledger:
            holds = ledger.holds()
        return holds[0]["request_id"] if len(holds) == 1 else None
    return wait_for(one, what="the embeddings request's hold")


def row(db, request_id: str) -> dict | None:
    with Ledger(db, create=False) as ledger:
        return ledger.request(request_id)


def billed_for_what_it_computed(r: dict, most: int) -> None:
    assert r["price"] == SPEC.cost(r["prompt_tokens"], 0) and r["completion_tokens"] == 0, r
    assert r["prompt_tokens"] <= most, r


def chat_time(srv, key: str) -> float:
    with srv.client(key) as http:
        t = time.monotonic()
        r = http.post("/v1/chat/completions", json=chat("Say hi.", max_tokens=4, temperature=0))
        took = time.monotonic() - t
    assert r.status_code == 200, r.text
    return took


def test_embeddings_are_bounded_stopped_and_billed_for_what_they_computed(make_server, engine):
    srv = make_server("--max-embedding-tokens", "20000", "--max-embedding-inputs", "16", "--embedding-queue", "1",
                      "--drain-timeout", "3", start=False)
    with srv.ledger() as ledger:
        key = ledger.create_key("embedder", credit=10**9)
        other = ledger.create_key("other", credit=10**9)
    srv.start()
    long = sized_input(engine, 1900)
    big = {"model": MODEL, "input": [long] * 10}                     # 19,000 tokens: under the cap
    with srv.client(key) as http:
        # caps: tokens (all inputs together) and inputs, each a 400 naming `input`, nothing charged
        r = http.post("/v1/embeddings", json={"model": MODEL, "input": [long] * 11})   # 20,900 tokens
        assert r.status_code == 400 and r.json()["error"]["param"] == "input", r.text
        assert "20900 tokens" in r.json()["error"]["message"]
        assert row(srv.db, r.headers["x-request-id"])["price"] == 0
        r = http.post("/v1/embeddings", json={"model": MODEL, "input": ["a"] * 17})
        assert r.status_code == 400 and r.json()["error"]["param"] == "input", r.text
        # makes the embeddings context and touches what each chunk uses (one chunk of 256 tokens: no need for more)
        warm = http.post("/v1/embeddings", json={"model": MODEL, "input": sized_input(engine, 256)})
        assert warm.status_code == 200
    quiet = statistics.median(chat_time(srv, other) for _ in range(3))

    # A client that leaves: its work stops within a chunk and it pays for what was computed.
    with PeakRss(srv.proc.pid) as rss:
        sock = send_raw(srv, key, big)
        left = the_hold(srv)
        with srv.client(key) as http:                                # the queue (1) is full: 503, Retry-After
            r = http.post("/v1/embeddings", json={"model": MODEL, "input": "hi"})
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, r.text
        under = statistics.median(chat_time(srv, other) for _ in range(3))
        sock.close()
        ended = wait_for(lambda: row(srv.db, left), what="the abandoned request's row")
    assert ended["status"] == "cancelled"
    billed_for_what_it_computed(ended, 19_000 - 1)                 # stopped before the end
    assert rss.grew_mb < 200, rss.report()
    assert under < 8 * quiet, (under, quiet)
    print(f"\nchat quiet {quiet:.3f} s, beside a 19,000-token embedding {under:.3f} s; {rss.report()}; "
          f"the abandoned request was billed for {ended['prompt_tokens']} tokens")

    with srv.client(key) as http:                                    # the queue is free again
        r = http.post("/v1/embeddings", json={"model": MODEL, "input": ["hello", "world"]})
        assert r.status_code == 200
        done = row(srv.db, r.headers["x-request-id"])
        assert done["status"] == "completed" and done["prompt_tokens"] == r.json()["usage"]["prompt_tokens"]
        billed_for_what_it_computed(done, 100)

    # A server that stops mid-request: after the drain timeout the work stops and what was computed is charged.
    sock = send_raw(srv, key, big)
    cut = the_hold(srv)
    assert srv.stop(signal.SIGTERM) == 0
    sock.close()
    stopped = row(srv.db, cut)
    assert stopped["status"] == "cancelled" and stopped["prompt_tokens"] > 0, stopped
    billed_for_what_it_computed(stopped, 19_000 - 1)
    with Ledger(srv.db, create=False) as ledger:
        assert not ledger.holds() and ledger.invariant()["ok"]
