"""Continuous batching end to end: many clients at once on one model, with the real tiny model."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import threading
import time

import httpx

from .conftest import chat

PROMPTS = ["Name a fruit.", "What is 2+2?", "Describe the moon.", "Write a haiku about rain.",
           "Give me a dog's name.", "What color is the sky?", "Say hi to Bob.", "List three animals."]


def complete(server, body: dict) -> dict:
    with server.client() as http:
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        return r.json()


def stream_text(server, body: dict) -> tuple[str, dict]:
    text, usage = [], None
    with server.client() as http:
        with http.stream("POST", "/v1/chat/completions",
                         json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
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
    bodies = [chat(p, max_tokens=24, temperature=0) for p in PROMPTS]
    bodies += [chat(p, max_tokens=24, temperature=0.9, seed=7 + i) for i, p in enumerate(PROMPTS[:4])]
    solo = [complete(server, b) for b in bodies]
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda b: stream_text(server, b), bodies))
    for alone, (text, usage) in zip(solo, together, strict=True):
        assert text == alone["choices"][0]["message"]["content"]
        assert usage["completion_tokens"] == alone["usage"]["completion_tokens"]
        assert usage["prompt_tokens"] == alone["usage"]["prompt_tokens"]


def test_prefix_reuse_gives_the_same_tokens_as_a_cold_run(make_server):
    srv = make_server("--parallel", "2")
    system = "You are a meticulous assistant. " * 40
    body = {"model": "smollm2-135m", "max_tokens": 20, "temperature": 0,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": "Name a bird."}]}
    cold = complete(srv, body)
    with srv.client() as http:
        before = http.get("/health").json()["models"]["smollm2-135m"]["reused_prompt_tokens"]
    warm = complete(srv, body)
    with srv.client() as http:
        after = http.get("/health").json()["models"]["smollm2-135m"]["reused_prompt_tokens"]
    assert warm["choices"][0]["message"]["content"] == cold["choices"][0]["message"]["content"]
    assert after - before == cold["usage"]["prompt_tokens"] - 2  # all but the two it always recomputes
    # a different question after the same system prompt reuses the system prompt's tokens
    other = {**body, "messages": [body["messages"][0], {"role": "user", "content": "Name a fish."}]}
    warm_other = complete(srv, other)
    srv2 = make_server("--parallel", "2")
    cold_other = complete(srv2, other)
    assert warm_other["choices"][0]["message"]["content"] == cold_other["choices"][0]["message"]["content"]


def test_disconnect_frees_the_slot_for_a_queued_request(make_server, no_eos):
    srv = make_server("--parallel", "1")
    started = threading.Event()

    def hog():
        with srv.client() as http:
            with http.stream("POST", "/v1/chat/completions",
                             json=chat("Write a very long essay.", max_tokens=1500, stream=True,
                                       logit_bias=no_eos)) as r:
                for i, _ in enumerate(r.iter_lines()):
                    if i == 4:
                        started.set()
                        time.sleep(1.0)  # the queued request is waiting now
                        return  # disconnect mid-generation

    t = threading.Thread(target=hog)
    t.start()
    assert started.wait(30)
    t0 = time.monotonic()
    r = complete(srv, chat("Say yes.", max_tokens=5))
    waited = time.monotonic() - t0
    t.join()
    assert r["choices"][0]["message"]["content"]
    # 1500 tokens would take >10 s; the slot came free when the hog left after ~1 s
    assert waited < 6, waited


def test_overload_gives_503_with_retry_after(make_server, no_eos):
    srv = make_server("--parallel", "1", "--max-queue", "1")
    stop = threading.Event()
    threads = [threading.Thread(target=hog, args=(srv, stop, no_eos)) for _ in range(2)]
    for th in threads:
        th.start()
        time.sleep(0.5)
    try:
        deadline = time.monotonic() + 10
        while True:
            with srv.client() as http:
                h = http.get("/health", timeout=2).json()["models"]["smollm2-135m"]
                if h["active"] == 1 and h["waiting"] == 1:
                    break
            assert time.monotonic() < deadline, h
            time.sleep(0.05)
        with srv.client() as http:
            t0 = time.monotonic()
            assert http.get("/health").status_code == 200
            assert time.monotonic() - t0 < 1.0  # /health stays responsive under full load
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
    th = threading.Thread(target=hog, args=(srv, stop, no_eos))
    th.start()
    try:
        time.sleep(0.5)
        with srv.client() as http:
            r = http.post("/v1/chat/completions", json=chat("x", max_tokens=2, stream=True))
        assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded"
        assert r.headers["retry-after"]
    finally:
        stop.set()
        th.join()


def test_a_client_that_never_reads_does_not_slow_others(server, no_eos):
    body = json.dumps(chat("Write a very long essay about oceans.", max_tokens=400, stream=True,
                           logit_bias=no_eos)).encode()
    host, port = server.base_url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + server.key.encode()
              + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
              + b"\r\n\r\n" + body)
    try:
        t0 = time.monotonic()
        r = complete(server, chat("Say yes.", max_tokens=8, temperature=0))
        assert r["choices"][0]["message"]["content"]
        assert time.monotonic() - t0 < 5
    finally:
        s.close()


def test_health_reports_slots(server):
    h = httpx.get(server.base_url + "/health").json()["models"]["smollm2-135m"]
    assert h["slots"] == 4 and h["ctx_per_slot"] == 2048
