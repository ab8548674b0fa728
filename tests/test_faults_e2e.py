"""Faults on a real server: the connection-level and stream faults need the real HTTP server (a TCP reset, a cut
mid-stream), in the OpenAI SSE stream and the gateway's plain-text stream; the verdicts on real clients."""

from __future__ import annotations

import json
import socket
import time

import httpx
import openai
import pytest

from reverb.testkit.control import Control
from reverb.testkit.server import start_server, stop_server
from reverb.testkit.usage import KeyRing

pytestmark = pytest.mark.model
MODEL = "smollm2-135m"
BANNED = {"2": -100, "1": -100}   # token 2 ends SmolLM2's turns, 1 ends text: the stream lasts max_tokens


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # Default (not deterministic) mode: a deterministic server pays ~0.3 s of CPU a request for fixed row shapes;
    # these tests compare one greedy request with itself, alone, with a short prompt, which takes the same row
    # path either way (runtime/backends/llama/shapes.py).
    srv = start_server(workdir=tmp_path_factory.mktemp("faults"), parallel=2, deterministic=False)
    keys = KeyRing(srv.db_path)
    yield srv, keys
    keys.close()
    stop_server(srv)


@pytest.fixture
def test(server, request):
    srv, keys = server
    _, raw = keys.create(request.node.nodeid)
    control = Control(srv.base_url, srv.control_secret, raw)
    control.watch()
    return srv, raw, control


def chat_body(n=8, stream=True):
    return {"model": MODEL, "messages": [{"role": "user", "content": "Count from one to twenty"}], "max_tokens": n,
            "temperature": 0, "stream": stream, "logit_bias": BANNED}


def raw_post(base_url: str, key: str, path: str, body: dict) -> socket.socket:
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=120)
    data = json.dumps(body).encode()
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def read_all(sock: socket.socket) -> bytes:
    out = b""
    with sock:
        while chunk := sock.recv(65536):
            out += chunk
    return out


def sse_events(raw: bytes) -> list[bytes]:
    body = raw.split(b"\r\n\r\n", 1)[1]
    return [line for line in body.split(b"\n") if line.startswith(b"data: ")]


def deltas(event: bytes) -> list:
    return [c["delta"] for c in json.loads(event[6:])["choices"]]


def test_reset_before_any_byte(test):
    srv, key, ctl = test
    ctl.fault("reset")
    sock = raw_post(srv.base_url, key, "/v1/chat/completions", chat_body())
    with pytest.raises(ConnectionResetError):
        read_all(sock)
    assert ctl.requests()[-1]["fault"] == "reset" and ctl.requests()[-1]["status"] is None


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/endpoint"])
def test_disconnect_after_n_events_in_each_dialect(test, path):
    srv, key, ctl = test
    body = chat_body() if path.startswith("/v1") else {
        "model": MODEL, "messages": chat_body()["messages"],
        "options": {"max_tokens": 8, "temperature": 0, "stream": True, "logit_bias": BANNED}}   # greedy, as
    # chat_body(): a sampled answer may spend its 8 tokens on pieces of characters and send fewer than 3 events
    whole = read_all(raw_post(srv.base_url, key, path, body))
    ctl.fault("disconnect", after=3)
    cut = read_all(raw_post(srv.base_url, key, path, body))
    assert whole.endswith(b"0\r\n\r\n") and not cut.endswith(b"0\r\n\r\n")   # no chunked terminator: not clean
    assert cut.startswith(b"HTTP/1.1 200") and len(cut) < len(whole)
    if path.startswith("/v1"):
        assert len(sse_events(cut)) == 3
        assert [deltas(e) for e in sse_events(whole)[:3]] == [deltas(e) for e in sse_events(cut)]
    with httpx.Client(base_url=srv.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
        ctl.fault("disconnect", after=2)
        with pytest.raises(httpx.RemoteProtocolError):
            with http.stream("POST", path, json=body) as r:
                for _ in r.iter_raw():
                    pass


def test_truncate_cuts_an_event_in_half(test):
    srv, key, ctl = test
    ctl.fault("truncate", after=2)
    events = sse_events(read_all(raw_post(srv.base_url, key, "/v1/chat/completions", chat_body())))
    assert len(events) == 3
    json.loads(events[1][6:])
    with pytest.raises(ValueError):
        json.loads(events[2][6:])


def test_corrupt_breaks_one_event_and_the_stream_goes_on(test):
    srv, key, ctl = test
    whole = sse_events(read_all(raw_post(srv.base_url, key, "/v1/chat/completions", chat_body())))
    ctl.fault("corrupt", after=2)
    events = sse_events(read_all(raw_post(srv.base_url, key, "/v1/chat/completions", chat_body())))
    assert len(events) == len(whole) + 1 and events[-1] == b"data: [DONE]"
    with pytest.raises(ValueError):
        json.loads(events[2][6:].decode("utf-8"))
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key=key, max_retries=0)
    ctl.fault("corrupt", after=2)
    with pytest.raises(Exception):  # noqa: B017 - the SDK raises whatever its JSON parser raises
        list(client.chat.completions.create(**chat_body()))


def test_a_stall_before_the_first_byte_meets_the_clients_timeout(test):
    srv, key, ctl = test
    ctl.fault("stall", seconds=600)
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key=key, max_retries=0, timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(**chat_body(stream=False))
    assert ctl.requests()[-1]["fault"] == "stall"


def test_a_stall_after_n_events(test):
    """Three events arrive, then nothing: the client's own read timeout is what ends it (1 s here, counted only
    from the third event, so a slow machine's prefill does not matter)."""
    srv, key, ctl = test
    ctl.fault("stall", after=3, seconds=600)
    sock = raw_post(srv.base_url, key, "/v1/chat/completions", chat_body())
    got = b""
    with sock:
        while got.count(b"data: ") < 3:
            got += sock.recv(65536)
        sock.settimeout(1.0)
        with pytest.raises(socket.timeout):
            got += sock.recv(65536)
    assert got.count(b"data: ") == 3
    assert ctl.requests()[-1]["fault"] == "stall"


def test_a_slow_first_token(test):
    """The delay is a lower bound the server adds: whatever the machine's speed, the first event waits for it."""
    srv, key, ctl = test

    def first_event_after() -> float:
        with httpx.Client(base_url=srv.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
            t0 = time.monotonic()
            with http.stream("POST", "/v1/chat/completions", json=chat_body(n=2)) as r:
                next(r.iter_raw())
                return time.monotonic() - t0
    ctl.fault("slow_first_token", seconds=1.5)
    assert first_event_after() >= 1.5
    assert ctl.requests()[-1]["fault"] == "slow_first_token" and ctl.requests()[-1]["status"] == 200


def test_verdicts_on_the_official_client(test):
    """The openai SDK honours Retry-After and backs off: its retries pass both verdicts."""
    srv, key, ctl = test
    ctl.fault(429, times=2, retry_after=1)
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key=key, max_retries=3)
    client.chat.completions.create(**chat_body(n=2, stream=False))
    assert [e["status"] for e in ctl.requests()] == [429, 429, 200]
    ctl.assert_honours_retry_after()
    ctl.assert_no_retry_storm()
    with ctl.assert_rejects_truncated_stream(after=2):
        "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**chat_body())
                if c.choices)


def test_verdicts_catch_a_client_that_does_not_behave(test):
    srv, key, ctl = test
    ctl.fault(429, times=3, retry_after=2)
    with httpx.Client(base_url=srv.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
        statuses = [http.post("/v1/chat/completions", json=chat_body(n=1, stream=False)).status_code
                    for _ in range(4)]   # retries at once, ignoring Retry-After
    assert statuses == [429, 429, 429, 200]
    with pytest.raises(AssertionError, match="Retry-After: 2"):
        ctl.assert_honours_retry_after()
    with pytest.raises(AssertionError, match="no backoff"):
        ctl.assert_no_retry_storm()
    with pytest.raises(AssertionError, match="sent 4 times"):
        ctl.assert_no_retry_storm(max_attempts=3, min_gap=0)

    def naive_stream(body):   # joins whatever content arrived, never checks that the stream ended
        text = ""
        try:
            with httpx.Client(timeout=120) as http, http.stream(
                    "POST", srv.base_url + "/v1/chat/completions", json=body,
                    headers={"Authorization": f"Bearer {key}"}) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        text += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        except (httpx.HTTPError, ValueError):
            pass
        return text
    with pytest.raises(AssertionError, match="accepted a truncated stream"):
        with ctl.assert_rejects_truncated_stream(after=3):
            naive_stream(chat_body())


def test_a_blocking_answer_cut_in_half(test):
    srv, key, ctl = test
    ctl.fault("truncate")
    raw = read_all(raw_post(srv.base_url, key, "/v1/chat/completions", chat_body(n=4, stream=False)))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body and not body.endswith(b"0\r\n\r\n")
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key=key, max_retries=0)
    ctl.fault("truncate")
    with pytest.raises(openai.APIError):
        client.chat.completions.create(**chat_body(n=4, stream=False))
    assert srv.process.poll() is None and "Traceback" not in srv.log()
