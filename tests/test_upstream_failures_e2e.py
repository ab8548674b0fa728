"""Upstream entries against a misbehaving upstream on loopback: usage and price, streaming, passthrough of tool
calls, every failure path (status, ledger row, no charge before the first byte), fallbacks, keep-alive,
disconnects, and the upstream key never leaking."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from reverb.money import MICRO

from .conftest import KEY, Server
from .upstreams import UP_KEY, cost, dead_url, gateway, remote, stop_and_check, wait_row
from .upstreams import upstream  # noqa: F401 - a fixture

pytestmark = pytest.mark.model   # servers on loopback (the slow tier), though none loads the model

ECHO = "one two three four five six"


def balance(srv) -> int:
    with srv.ledger() as ledger:
        return next(k for k in ledger.list_keys() if k["name"] == "alice")["balance"]


def sse(raw: bytes) -> list:
    """The payloads of a raw SSE body (the JSON objects, and "[DONE]")."""
    out = []
    for ev in raw.decode().split("\n\n"):
        if ev:
            assert ev.startswith("data: ") and "\n" not in ev, ev
            data = ev[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


@pytest.fixture(scope="module")
def gw(tmp_path_factory, upstream):  # noqa: F811 - the fixture
    """A gateway in front of the misbehaving upstream: one entry per behaviour, named up-<behaviour>. Shared by
    the module's tests (each compares balances before and after itself); the invariant is checked at the end."""
    names = ["echo", "no-usage", "tools", "status-400", "status-401", "status-404", "status-429", "status-500",
             "slow", "slow-mid", "cut", "garbage", "garbage-mid", "error-event", "not-sse", "hang"]
    # The slow upstream never answers until the test ends, so its timeout may be short; slow-mid's must also
    # outlast the first two events' arrival on a busy machine.
    timeouts = {"slow": 0.5, "slow-mid": 5}
    entries = {f"up-{n}": remote(upstream.url, n, timeout=timeouts.get(n, 60)) for n in names}
    entries["up-dead"] = remote(dead_url(), "echo")
    entries["up-fallback"] = remote(upstream.url, "status-500", fallbacks=["up-dead", "up-echo"])
    entries["up-cut-fallback"] = remote(upstream.url, "cut", fallbacks=["up-echo"])
    srv, key = gateway(Server, tmp_path_factory.mktemp("gw"), entries, "up-echo")
    srv.alice = key
    srv.http = srv.client(key)
    try:
        yield srv
    finally:
        srv.http.close()
        stop_and_check(srv)


def post(srv, path: str, body: dict, key: str | None = None) -> httpx.Response:
    if key is not None:
        with srv.client(key) as c:
            return c.post(path, json=body)
    return srv.http.post(path, json=body)   # alice's client, kept for the module: each new one is ~26 ms of CPU


def test_usage_price_and_the_public_name(gw, upstream):  # noqa: F811
    before = balance(gw)
    r = post(gw, "/v1/chat/completions", {"model": "up-echo", "messages": [{"role": "user", "content": ECHO}],
                                          "max_tokens": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "up-echo" and body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "one two three four"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 6 + 7, "completion_tokens": 4, "total_tokens": 17}
    assert int(r.headers["x-reverb-price"]) == cost(13, 4)
    sent = upstream.last()["body"]
    assert sent["model"] == "echo" and sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["max_tokens"] == 4 and sent["messages"] == [{"role": "user", "content": ECHO}]
    assert upstream.last()["headers"]["authorization"] == f"Bearer {UP_KEY}"
    row = wait_row(gw, r.headers["x-request-id"])
    assert (row["status"], row["model"], row["prompt_tokens"], row["completion_tokens"], row["price"]) == \
        ("completed", "up-echo", 13, 4, cost(13, 4))
    assert balance(gw) == before - cost(13, 4)
    # The gateway dialect: the same upstream, tokens and price in the result.
    g = post(gw, "/api/endpoint", {"model": "up-echo", "messages": [{"role": "user", "content": ECHO}],
                                   "options": {"max_tokens": 3, "temperature": 0.5}}).json()
    assert g["status"] == 1 and g["result"]["response"] == "one two three" and g["result"]["model"] == "up-echo"
    assert (g["result"]["tokens_input"], g["result"]["tokens_output"]) == (13, 3)
    assert g["result"]["price"] == cost(13, 3) / MICRO
    assert upstream.last()["body"]["temperature"] == 0.5


def test_streaming_relays_events_then_usage_and_done(gw, upstream):  # noqa: F811
    client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=gw.alice, max_retries=0)
    chunks = list(client.chat.completions.create(model="up-echo", messages=[{"role": "user", "content": ECHO}],
                                                 stream=True, stream_options={"include_usage": True}))
    assert {c.model for c in chunks} == {"up-echo"} and len({c.id for c in chunks}) == 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ECHO
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 13
    assert chunks[-1].usage.completion_tokens == 6
    assert chunks[0].system_fingerprint == "fp_up"


def test_no_usage_settles_on_the_documented_estimate(gw, upstream):  # noqa: F811
    content = "alpha beta gamma"
    r = post(gw, "/v1/chat/completions", {"model": "up-no-usage", "messages": [{"role": "user", "content": content}]})
    assert r.status_code == 200
    # prompt: ceil(bytes / 3) + 4 per message + 3; completion: ceil(bytes / 3) of each streamed delta
    prompt = -(-len(content) // 3) + 4 + 3
    completion = sum(-(-len(piece) // 3) for piece in ["alpha", " beta", " gamma"])
    assert r.json()["usage"]["prompt_tokens"] == prompt and r.json()["usage"]["completion_tokens"] == completion
    row = wait_row(gw, r.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"], row["price"]) == (prompt, completion,
                                                                              cost(prompt, completion))


def test_tool_calls_pass_through_both_ways(gw, upstream):  # noqa: F811
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_0", "content": "{\"error\": \"no city\"}"}]
    client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=gw.alice, max_retries=0)
    r = client.chat.completions.create(model="up-tools", messages=messages, tools=tools, tool_choice="required",
                                       parallel_tool_calls=False, metadata={"team": "a"})
    sent = upstream.last()["body"]
    assert sent["tools"] == tools and sent["messages"] == messages and sent["tool_choice"] == "required"
    assert sent["parallel_tool_calls"] is False and sent["metadata"] == {"team": "a"}
    call = r.choices[0].message.tool_calls[0]
    assert (call.id, call.type, call.function.name, call.function.arguments) == \
        ("call_1", "function", "get_weather", '{"city": "Paris"}')
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    with client.chat.completions.stream(model="up-tools", messages=messages, tools=tools) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert final.choices[0].message.tool_calls[0].function.arguments == '{"city": "Paris"}'
    assert final.choices[0].finish_reason == "tool_calls" and final.model == "up-tools"


@pytest.mark.parametrize("model,status,code", [
    ("up-status-400", 400, "bad_value"),
    ("up-status-429", 429, "rate_limit_exceeded"),
    ("up-status-500", 502, "upstream_error"),
    ("up-status-401", 502, "upstream_auth_failed"),
    ("up-status-404", 502, "upstream_not_found"),
    ("up-dead", 502, "upstream_unavailable"),
    ("up-slow", 504, "upstream_timeout"),
    ("up-garbage", 502, "upstream_bad_response"),
    ("up-not-sse", 502, "upstream_bad_response"),
])
def test_failures_before_the_first_byte_refund_everything(gw, model, status, code):
    before = balance(gw)
    for stream in (False, True):
        body = {"model": model, "messages": [{"role": "user", "content": ECHO}], "stream": stream}
        r = post(gw, "/v1/chat/completions", body)
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["code"] == code and UP_KEY not in r.text
        if status < 500:  # the upstream's own 4xx: its message, scrubbed of our key
            assert "upstream refuses this request" in err["message"] and "***" in err["message"]
            assert err["param"] == "temperature"
        row = wait_row(gw, r.headers["x-request-id"])
        assert (row["status"], row["error_code"], row["price"], row["completion_tokens"]) == ("failed", code, 0, 0)
    if status == 429:
        assert r.headers["retry-after"] == "7"
    g = post(gw, "/api/endpoint", {"model": model, "messages": [{"role": "user", "content": ECHO}]})
    assert g.status_code == status and g.json()["status"] == 0 and g.json()["error"]["code"] == code
    wait_row(gw, g.headers["x-request-id"])
    assert balance(gw) == before


@pytest.mark.parametrize("model,code", [("up-cut", "upstream_cut"), ("up-garbage-mid", "upstream_bad_response"),
                                        ("up-error-event", "upstream_error"), ("up-slow-mid", "upstream_timeout")])
def test_failures_mid_stream_end_with_an_error_event_and_charge_what_was_delivered(gw, model, code):
    body = {"model": model, "messages": [{"role": "user", "content": ECHO}], "stream": True}

    def plain_text_stream():
        """The gateway dialect's plain-text stream has no error frame: it breaks off."""
        with gw.client(gw.alice) as c, pytest.raises(httpx.RemoteProtocolError):
            with c.stream("POST", "/api/endpoint", json={"model": model, "messages": body["messages"],
                                                          "options": {"stream": True}}) as s:
                for _ in s.iter_raw():
                    pass

    # both dialects at once: up-slow-mid's between-bytes timeout is then waited once, not twice
    with ThreadPoolExecutor(1) as pool:
        gateway_dialect = pool.submit(plain_text_stream)
        with gw.client(gw.alice) as c:
            r = c.post("/v1/chat/completions", json=body)
        gateway_dialect.result()
    assert r.status_code == 200
    events = sse(r.content)
    assert "[DONE]" not in events and events[-1]["error"]["code"] == code
    assert all("choices" in e for e in events[:-1]) and UP_KEY not in r.text
    row = wait_row(gw, r.headers["x-request-id"])
    assert row["status"] == "failed" and row["error_code"] == code
    delivered = [e["choices"][0]["delta"].get("content") or "" for e in events[:-1]]
    completion = sum(-(-len(p) // 3) for p in delivered)
    prompt = -(-len(ECHO) // 3) + 4 + 3
    assert (row["prompt_tokens"], row["completion_tokens"], row["price"]) == (prompt, completion,
                                                                              cost(prompt, completion))


def test_fallbacks_before_the_first_byte_only(gw, upstream):  # noqa: F811
    r = post(gw, "/v1/chat/completions", {"model": "up-fallback", "messages": [{"role": "user", "content": ECHO}]})
    assert r.status_code == 200 and r.json()["model"] == "up-echo"
    assert r.json()["choices"][0]["message"]["content"] == ECHO
    assert [q["body"]["model"] for q in upstream.requests[-2:]] == ["status-500", "echo"]
    row = wait_row(gw, r.headers["x-request-id"])
    assert (row["model"], row["status"], row["price"]) == ("up-echo", "completed", cost(13, 6))
    # A stream cut after its first byte is not retried elsewhere: the client already has part of an answer.
    with gw.client(gw.alice) as c:
        s = c.post("/v1/chat/completions", json={"model": "up-cut-fallback", "stream": True,
                                                 "messages": [{"role": "user", "content": ECHO}]})
    assert sse(s.content)[-1]["error"]["code"] == "upstream_cut"
    assert upstream.last()["body"]["model"] == "cut"


def test_connections_are_kept_alive(gw, upstream):  # noqa: F811
    for _ in range(3):
        assert post(gw, "/api/endpoint", {"model": "up-echo",
                                          "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    assert len({q["port"] for q in upstream.requests[-3:]}) == 1


def test_a_client_that_leaves_closes_the_upstream_request(gw, upstream):  # noqa: F811
    with gw.client(gw.alice) as c:
        with c.stream("POST", "/v1/chat/completions", json={
                "model": "up-hang", "stream": True, "messages": [{"role": "user", "content": ECHO}]}) as s:
            rid = s.headers["x-request-id"]
            next(s.iter_lines())  # the first event has arrived: the upstream is answering
    assert upstream.disconnected.wait(60)
    row = wait_row(gw, rid)
    assert row["status"] == "cancelled" and row["price"] == cost(-(-len(ECHO) // 3) + 7, 0)


def test_the_upstream_key_never_leaks(make_server, upstream, tmp_path):  # noqa: F811
    entries = {f"up-{n}": remote(upstream.url, n) for n in ("echo", "status-400", "status-401", "status-429", "cut")}
    entries["up-dead"] = remote(dead_url(), "echo")
    gw, key = gateway(make_server, tmp_path, entries, "up-echo", "--log-bodies", "--log-format", "json")
    gw.alice = key
    seen = []  # every byte the clients received: headers and bodies, broken streams included

    def call(c: httpx.Client, path: str, body: dict) -> None:
        with c.stream("POST", path, json=body) as r:
            seen.append(str(r.headers).encode())
            try:
                for data in r.iter_raw():
                    seen.append(data)
            except httpx.RemoteProtocolError:  # the gateway dialect's way to end a broken stream
                pass

    messages = [{"role": "user", "content": ECHO}]
    with gw.client(key) as c:   # one client for the 24 calls (a broken stream's connection is dropped, not reused)
        for model in ("up-echo", "up-status-400", "up-status-401", "up-status-429", "up-dead", "up-cut"):
            for stream in (False, True):
                call(c, "/v1/chat/completions", {"model": model, "messages": messages, "stream": stream})
                call(c, "/api/endpoint", {"model": model, "messages": messages, "options": {"stream": stream}})
    with gw.client(KEY) as c:
        seen += [c.get(p).content for p in ("/v1/models", "/metrics", "/health", "/openapi.json")]
    assert upstream.last()["headers"]["authorization"] == f"Bearer {UP_KEY}"  # sent to the upstream, and only there
    # metrics and the access log count upstream requests like any other, failures with their code
    assert b'reverb_generations_total{model="up-dead",status="failed"} 4.0' in seen[-3]
    assert b'reverb_generations_total{model="up-echo",status="completed"} 4.0' in seen[-3]
    gw.stop()
    access = [json.loads(line) for line in gw.log().splitlines() if line.startswith('{"ts"')]
    dead = [a for a in access if a["model"] == "up-dead"]
    assert len(dead) == 4 and all((a["status"], a["outcome"], a["error_code"]) == (502, "failed",
                                                                                 "upstream_unavailable") for a in dead)
    assert all(a["outcome"] == "completed" and a["completion_tokens"] == 6 for a in access if a["model"] == "up-echo")
    stored = [p.read_bytes() for p in gw.workdir.rglob("*") if p.is_file()]  # ledger, its WAL, the server's log
    assert len(stored) >= 2 and b"upstream refuses this request" in gw.log_path.read_bytes()
    assert b"upstream refuses this request (sent with Bearer ***)" in b"".join(seen)  # passed on, scrubbed
    assert not any(UP_KEY.encode() in data for data in stored + seen)
