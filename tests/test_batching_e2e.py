"""Continuous batching end to end: many clients at once on one model, with the real tiny model.

Tests that compare answers run the server with --deterministic (the shared ``server`` fixture does); default mode
promises speed, not identical answers under load."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import threading
import time

import httpx

from .conftest import chat, wait_for

PROMPTS = ["Name a fruit.", "What is 2+2?", "Describe the moon.", "Write a haiku about rain.",
           "Give me a dog's name.", "What color is the sky?", "Say hi to Bob.", "List three animals."]


def complete(server, body: dict, key: str | None = None) -> dict:
    with server.client(key or server.key) as http:
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        return r.json()


def stream_text(server, body: dict) -> tuple[str, dict]:
    text, usage = [], None
    with server.client() as http:
        with http.stream("POST", "/v1/chat/completions",
                         json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
            assert r.status_code == 200, r.read()
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    ev = json.loads(line[6:])
                    if ev["choices"]:
                        text.append(ev["choices"][0]["delta"].get("content") or "")
                    elif ev.get("usage"):
                        usage = ev["usage"]
    return "".join(text), usage


def hog(srv, stop: threading.Event, no_eos: dict) -> None:
    """A stream that holds a slot (no end token) until ``stop`` is set."""
    with srv.client() as http:
        with http.stream("POST", "/v1/chat/completions",
                         json=chat("Write a very long essay.", max_tokens=1500, stream=True, logit_bias=no_eos)) as r:
            for _ in r.iter_lines():
                if stop.is_set():
                    return


def test_concurrent_streams_match_their_solo_runs(server):
    # more streams than the server's 4 slots: some queue, and slots are refilled while others run
    bodies = [chat(p, max_tokens=8, temperature=0) for p in PROMPTS[:4]]
    bodies += [chat(p, max_tokens=8, temperature=0.9, seed=7 + i) for i, p in enumerate(PROMPTS[4:6])]
    solo = [complete(server, b) for b in bodies]
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda b: stream_text(server, b), bodies))
    for alone, (text, usage) in zip(solo, together, strict=True):
        assert text == alone["choices"][0]["message"]["content"]
        assert usage["completion_tokens"] == alone["usage"]["completion_tokens"]
        assert usage["prompt_tokens"] == alone["usage"]["prompt_tokens"]


def test_prefix_reuse_gives_the_same_tokens_as_a_cold_run(server):
    srv, key = server, server.new_key()      # a key of its own: no other test's prefix is this key's to reuse
    system = "You are a meticulous assistant. " * 40
    body = {"model": "smollm2-135m", "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": "Name a bird."}]}
    cold = complete(srv, body, key=key)
    assert cold["usage"]["prompt_tokens"] > 256           # its last piece runs tiled (shapes.py)
    before = srv.stats()["reused"]
    warm = complete(srv, body, key=key)
    after = srv.stats()["reused"]
    assert warm["choices"][0]["message"]["content"] == cold["choices"][0]["message"]["content"]
    assert after - before == cold["usage"]["prompt_tokens"] - 1   # all but the last token (its TILED piece
    # re-reads cached rows instead: shapes.py)
    # a different question after the same system prompt reuses the system prompt's tokens
    other = {**body, "messages": [body["messages"][0], {"role": "user", "content": "Name a fish."}]}
    warm_other = complete(srv, other, key=key)
    assert srv.stats()["reused"] - after > 100
    # cold: another key (a prefix is reused for its own key only, unless --share-prompt-cache) on the same server
    before = srv.stats()["reused"]
    cold_other = complete(srv, other, key=srv.new_key())
    assert srv.stats()["reused"] == before
    assert warm_other["choices"][0]["message"]["content"] == cold_other["choices"][0]["message"]["content"]


def test_long_contexts_are_identical_alone_and_under_load(server, no_eos):
    """Past position 256 a lone stream takes another attention kernel than a stream sharing its pass: deterministic
    mode must hide that. A seeded answer to a long prompt (every token it generates is past 256: the prompt gets
    there, generating is not needed for it), alone, then while other streams run."""
    srv = server
    story = "The keeper of the lighthouse wrote in his log every night about ships and weather. " * 17
    body = chat(story + "Continue the story.", max_tokens=24, temperature=1.0, seed=11, logit_bias=no_eos)
    first = complete(srv, body)
    assert first["usage"]["prompt_tokens"] > 256
    alone = first["choices"][0]["message"]["content"]
    others = [chat(f"Tell me about the number {i}.", max_tokens=40, temperature=0.7, seed=i, logit_bias=no_eos)
              for i in range(3)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(stream_text, srv, b) for b in others]
        loaded = complete(srv, body)["choices"][0]["message"]["content"]
        for f in futures:
            f.result()
    assert loaded == alone


def test_default_mode_serves_concurrent_streams_to_their_length(shared_server, no_eos):
    # a long prompt beside them, read in several chunks (a small --prefill-chunk keeps the prompt, and the test, short)
    srv = shared_server("--parallel", "4", "--prefill-chunk", "64")
    bodies = [chat(p, max_tokens=8, logit_bias=no_eos) for p in PROMPTS[:6]]
    bodies.append(chat("Summarize this. " + "The sea is wide and deep. " * 30, max_tokens=8, logit_bias=no_eos))
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        results = list(pool.map(lambda b: stream_text(srv, b), bodies))
    for text, usage in results:
        assert text and usage["completion_tokens"] == 8
    assert results[-1][1]["prompt_tokens"] > 3 * 64


def test_disconnect_frees_the_slot_for_a_queued_request(shared_server, no_eos):
    srv = shared_server("--parallel", "1")
    streaming, leave = threading.Event(), threading.Event()
    got: dict = {}

    def hog():
        with srv.client() as http:
            with http.stream("POST", "/v1/chat/completions",
                             json=chat("Write a very long essay.", max_tokens=1500, stream=True,
                                       logit_bias=no_eos)) as r:
                got["hog"] = r.headers["x-request-id"]
                for _ in r.iter_lines():
                    streaming.set()
                    if leave.is_set():
                        return  # disconnect mid-generation

    def queued():
        got["queued"] = complete(srv, chat("Say yes.", max_tokens=5))

    t, q = threading.Thread(target=hog), threading.Thread(target=queued)
    t.start()
    assert streaming.wait(300)
    q.start()
    wait_for(lambda: srv.stats()["waiting"] == 1, what="the second request to queue")
    leave.set()
    t.join()
    q.join()
    assert got["queued"]["choices"][0]["message"]["content"]
    with srv.ledger() as ledger:
        hog_row = wait_for(lambda: ledger.request(got["hog"]), what="the hog's row")
    # the slot came free because the client left, not because its 1500 tokens were done
    assert hog_row["status"] == "cancelled" and hog_row["completion_tokens"] < 1500


def hold_slots(srv, n: int, no_eos: dict, stop: threading.Event) -> list[threading.Thread]:
    """Start ``n`` slot-holding streams one after another, each running (or queued) before the next starts."""
    threads = []
    for i in range(n):
        th = threading.Thread(target=hog, args=(srv, stop, no_eos))
        th.start()
        threads.append(th)
        wait_for(lambda i=i: (lambda st: st["active"] + st["waiting"] >= i + 1)(srv.stats()),
                 what=f"stream {i + 1} to be admitted")
    return threads


def test_overload_gives_503_with_retry_after(make_server, no_eos):
    srv = make_server("--parallel", "1", "--max-queue", "1")
    stop = threading.Event()
    threads = []
    try:
        threads = hold_slots(srv, 2, no_eos, stop)
        with srv.client() as http:
            assert http.get("/health").status_code == 200  # /health stays answerable under full load
            r = http.post("/v1/chat/completions", json=chat("x", max_tokens=2))
            g = http.post("/api/endpoint", json={"model": "smollm2-135m", "messages": [{"role": "user",
                                                                                       "content": "x"}]})
        assert r.status_code == 503 and r.headers["retry-after"].isdigit()
        assert r.json()["error"]["code"] == "overloaded"
        assert g.status_code == 503 and g.json()["status"] == 0 and g.headers["retry-after"]
    finally:
        stop.set()
        for th in threads:
            th.join()


def test_queue_timeout_gives_503(make_server, no_eos):
    srv = make_server("--parallel", "1", "--queue-timeout", "0.5")
    stop = threading.Event()
    threads = []
    try:
        threads = hold_slots(srv, 1, no_eos, stop)
        with srv.client() as http:
            r = http.post("/v1/chat/completions", json=chat("x", max_tokens=2, stream=True))
        assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded"
        assert r.headers["retry-after"]
    finally:
        stop.set()
        for th in threads:
            th.join()


def decode_rate(server, no_eos: dict, tokens: int = 32) -> float:
    """Tokens per second of one stream, first token to last (prefill excluded)."""
    times = []
    with server.client() as http:
        with http.stream("POST", "/v1/chat/completions",
                         json=chat("Count slowly.", max_tokens=tokens, stream=True, temperature=0,
                                   logit_bias=no_eos)) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and '"content":"' in line:
                    times.append(time.monotonic())
    return (len(times) - 1) / (times[-1] - times[0])


def test_a_client_that_never_reads_does_not_slow_others(server, no_eos):
    alone = decode_rate(server, no_eos)
    body = json.dumps(chat("Write a very long essay about oceans.", max_tokens=1500, stream=True,
                           logit_bias=no_eos)).encode()
    host, port = server.base_url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + server.key.encode()
              + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
              + b"\r\n\r\n" + body)
    try:
        wait_for(lambda: server.stats()["active"] >= 1, what="the non-reading stream to run")
        beside = decode_rate(server, no_eos)
    finally:
        s.close()
    # Sharing the batch with one more stream costs some speed; a stream blocked on its client would cost all of
    # it. A wide margin, since both rates come from this busy machine.
    assert beside > 0.25 * alone, (alone, beside)


def test_metrics_report_slots_and_health_reports_nothing_more(server):
    st = server.stats()
    assert st["slots"] == 4 and st["ctx"] == 2048
    assert httpx.get(server.base_url + "/health", timeout=300).json() == {"status": "ok"}
