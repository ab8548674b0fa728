"""Upstream relays that cannot be turned (issue 20, item 5), against a real `reverb serve` in front of the scripted
misbehaving upstream on loopback: its key in every field never reaches the client, the access log or the ledger;
an upstream that ignores max_tokens is cut and the answer billed for what was relayed; absurd usage is replaced by
the local count; keep-alive comments do not extend the total deadline; Retry-After is clamped; the gateway refuses
by name what it would not relay."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .conftest import KEY, Server
from .upstreams import UP_KEY, cost, gateway, remote, stop_and_check, wait_row
from .upstreams import upstream  # noqa: F401 - a fixture

pytestmark = pytest.mark.model   # servers on loopback (the slow tier), though none loads the model

ECHO = "one two three four five six"
MESSAGES = [{"role": "user", "content": ECHO}]
PROMPT = -(-len(ECHO) // 3) + 4 + 3         # the local estimate of MESSAGES (UTF-8 bytes / 3 + 4 + 3)
DEADLINE = 3                                 # the keep-alive entries' total deadline, seconds


@pytest.fixture(scope="module")
def gw(tmp_path_factory, upstream):  # noqa: F811 - the fixture
    names = ["echo", "flood", "flood-big", "usage-zero", "usage-huge", "status-429-long", "status-429-date"]
    entries = {f"up-{n}": remote(upstream.url, n) for n in names}
    for n in ("keepalive", "keepalive-first"):  # between-bytes timeout far longer than the total deadline
        entries[f"up-{n}"] = remote(upstream.url, n, timeout=120, deadline=DEADLINE)
    srv, key = gateway(Server, tmp_path_factory.mktemp("attacks"), entries, "up-echo")
    srv.alice = key
    srv.http = srv.client(key)   # alice's client for the module: each new httpx client is ~26 ms of CPU
    try:
        yield srv
    finally:
        srv.http.close()
        stop_and_check(srv)


def sse(raw: bytes) -> list:
    out = []
    for ev in raw.decode().split("\n\n"):
        if ev:
            data = ev.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def everything(srv, path: str, body: dict) -> bytes:
    """Every byte the client gets (headers and body, a broken stream included)."""
    seen = []
    with srv.http.stream("POST", path, json=body) as r:   # a broken stream's connection is dropped, not reused
        seen.append(str(r.headers).encode())
        try:
            for data in r.iter_raw():
                seen.append(data)
        except httpx.RemoteProtocolError:
            pass
    return b"".join(seen)


def test_the_key_in_any_field_never_reaches_the_client_the_log_or_the_ledger(make_server, upstream,  # noqa: F811
                                                                              tmp_path):
    entries = {f"up-{n}": remote(upstream.url, n) for n in ("leaky", "leaky-code-400", "leaky-code-429",
                                                            "leaky-error", "leaky-header")}
    gw, gw.alice = gateway(make_server, tmp_path, entries, "up-leaky", "--log-format", "json", "--log-bodies")
    gw.http = gw.client(gw.alice)
    seen = b""
    for model in ("up-leaky", "up-leaky-code-400", "up-leaky-code-429", "up-leaky-error", "up-leaky-header"):
        for stream in (False, True):
            seen += everything(gw, "/v1/chat/completions", {"model": model, "messages": MESSAGES, "stream": stream,
                                                            "stream_options": {"include_usage": True}} if stream
                               else {"model": model, "messages": MESSAGES})
            seen += everything(gw, "/api/endpoint", {"model": model, "messages": MESSAGES,
                                                     "options": {"stream": stream}})
    assert upstream.last()["headers"]["authorization"] == f"Bearer {UP_KEY}"
    assert UP_KEY.encode() not in seen
    # The fields are relayed, scrubbed: the answer's text, the upstream's own fields, a refusal's param.
    r = gw.http.post("/v1/chat/completions", json={"model": "up-leaky", "messages": MESSAGES}, timeout=60)
    message = r.json()["choices"][0]["message"]
    assert message["content"].startswith("one (***) two (***)")
    assert message["tool_calls"][0]["function"]["name"] == "***"
    assert r.json()["choices"][0]["logprobs"]["content"][0]["token"] == "***"
    with gw.client(gw.alice) as c:
        events = sse(c.post("/v1/chat/completions", json={"model": "up-leaky", "messages": MESSAGES,
                                                          "stream": True}).content)
    assert events[0]["x_debug"] == {"authorization": "***", "***": ["***"]} and events[0]["system_fingerprint"] == "***"
    e = gw.http.post("/v1/chat/completions", json={"model": "up-leaky-code-400", "messages": MESSAGES}, timeout=60)
    assert e.status_code == 400 and e.json()["error"]["param"] == "***"
    assert e.json()["error"]["code"] == "upstream_rejected" and e.json()["error"]["type"] == "invalid_request_error"
    gw.http.close()
    gw.stop()
    stored = [p.read_bytes() for p in gw.workdir.rglob("*") if p.is_file()]   # ledger, its WAL, the server's log
    assert any(b'"route":"chat.completions"' in data for data in stored)
    assert b"X-Echo ***" in gw.log_path.read_bytes()   # the HTTP library's error, logged scrubbed
    assert not any(UP_KEY.encode() in data for data in stored)


def test_an_upstream_that_ignores_max_tokens_is_cut_and_billed_for_what_was_relayed(gw, upstream):  # noqa: F811
    for model in ("up-flood", "up-flood-big"):
        upstream.disconnected.clear()
        r = gw.http.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES, "max_tokens": 16},
                         timeout=120)
        assert r.status_code == 200, r.text
        content = r.json()["choices"][0]["message"]["content"]
        assert 0 < len(content.encode()) <= 16 * 16 and r.json()["choices"][0]["finish_reason"] == "length"
        assert upstream.disconnected.wait(60)  # reverb stopped reading and closed the connection
        # billed for what was relayed: the local count of the delivered text, at most max_tokens
        assert r.json()["usage"]["completion_tokens"] == 16
        row = wait_row(gw, r.headers["x-request-id"])
        assert (row["status"], row["completion_tokens"], row["price"]) == ("completed", 16, cost(PROMPT, 16))
        assert int(r.headers["x-reverb-price"]) == cost(PROMPT, 16)
    # streamed: the cut choice ends with "length", the usage is the local count, then [DONE]
    with gw.client(gw.alice) as c:
        s = c.post("/v1/chat/completions", json={"model": "up-flood", "messages": MESSAGES, "max_tokens": 4,
                                                 "stream": True, "stream_options": {"include_usage": True}})
    events = sse(s.content)
    assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] == 4
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-2] if e["choices"])
    assert 0 < len(text.encode()) <= 4 * 16
    assert [e["choices"][0]["finish_reason"] for e in events[:-2] if e["choices"]][-1] == "length"
    # the gateway dialect, blocking and streamed
    g = gw.http.post("/api/endpoint", timeout=120,
                     json={"model": "up-flood-big", "messages": MESSAGES, "options": {"max_tokens": 8}}).json()
    assert g["status"] == 1 and len(g["result"]["response"].encode()) <= 8 * 16
    assert g["result"]["tokens_output"] == 8
    plain = everything(gw, "/api/endpoint", {"model": "up-flood", "messages": MESSAGES,
                                             "options": {"max_tokens": 8, "stream": True}})
    assert len(plain.split(b"\r\n\r\n", 1)[-1]) <= 8 * 16 + 400   # headers aside, the text within the bound


@pytest.mark.parametrize("model", ["up-usage-zero", "up-usage-huge"])
def test_absurd_reported_usage_is_replaced_by_the_local_count(gw, model):
    r = gw.http.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES, "max_tokens": 20}, timeout=60)
    assert r.status_code == 200
    delivered = ["one", " two", " three", " four", " five", " six"]
    completion = sum(-(-len(p) // 3) for p in delivered)
    assert r.json()["usage"] == {"prompt_tokens": PROMPT, "completion_tokens": completion,
                                 "total_tokens": PROMPT + completion}
    row = wait_row(gw, r.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"], row["price"]) == (PROMPT, completion,
                                                                              cost(PROMPT, completion))
    assert f"upstream {model} reported usage" in gw.log()


def test_keep_alive_comments_do_not_extend_the_total_deadline(gw, upstream):  # noqa: F811
    # After the first event: the stream ends with an error event, charged for what was delivered.
    upstream.disconnected.clear()
    with gw.client(gw.alice, timeout=120) as c:
        s = c.post("/v1/chat/completions", json={"model": "up-keepalive", "messages": MESSAGES, "stream": True})
    events = sse(s.content)
    assert events[-1]["error"]["code"] == "upstream_timeout" and "[DONE]" not in events
    assert upstream.disconnected.wait(60)
    row = wait_row(gw, s.headers["x-request-id"])
    assert (row["status"], row["error_code"], row["completion_tokens"]) == ("failed", "upstream_timeout", 2)
    assert row["latency_ms"] >= DEADLINE * 1000
    # Before any event: 504, nothing charged, in both dialects (the two at once: the deadline is waited once).
    def before_any_event(path):
        with gw.client(gw.alice, timeout=120) as c:
            return c.post(path, json={"model": "up-keepalive-first", "messages": MESSAGES})

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(before_any_event, ("/v1/chat/completions", "/api/endpoint")))
    for r in answers:
        assert r.status_code == 504 and "upstream_timeout" in r.text
        row = wait_row(gw, r.headers["x-request-id"])
        assert (row["status"], row["price"]) == ("failed", 0)


@pytest.mark.parametrize("model", ["up-status-429-long", "up-status-429-date"])
def test_retry_after_from_an_upstream_is_clamped(gw, model):
    for path, body in (("/v1/chat/completions", {"model": model, "messages": MESSAGES}),
                       ("/api/endpoint", {"model": model, "messages": MESSAGES})):
        with gw.client(gw.alice) as c:
            r = c.post(path, json=body)
        assert r.status_code == 429 and r.headers["retry-after"] == "60"


@pytest.mark.parametrize("option,value", [
    ("response_format", {"type": "json_object"}),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]),
    ("logprobs", True),
])
def test_the_gateway_refuses_by_name_what_it_would_not_relay(gw, upstream, option, value):  # noqa: F811
    sent = len(upstream.requests)
    r = gw.http.post("/api/endpoint", timeout=60,
                     json={"model": "up-echo", "messages": MESSAGES, "options": {option: value}})
    assert r.status_code == 400 and r.json()["error"]["param"] == f"options.{option}", r.text
    assert len(upstream.requests) == sent   # nothing went upstream
    # values that ask for nothing are still fine
    ok = httpx.post(gw.base_url + "/api/endpoint", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                    json={"model": "up-echo", "messages": MESSAGES,
                          "options": {"response_format": {"type": "text"}, "logprobs": False}})
    assert ok.status_code == 200 and ok.json()["status"] == 1
