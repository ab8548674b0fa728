"""Issue 20, item 7 against a real `reverb serve` (in front of the scripted upstream, so no model loads):
/metrics refused to a plain key, errors quoting at most 64 characters of a client's value (raw sockets), and
requests cut by the drain timeout logged as cancelled."""

from __future__ import annotations

import json
import socket
import threading

import httpx
import pytest

from .conftest import KEY, wait_for
from .upstreams import gateway, remote, wait_row
from .upstreams import upstream  # noqa: F401 - a fixture

pytestmark = pytest.mark.model   # servers on loopback (the slow tier), though none loads the model

MESSAGES = [{"role": "user", "content": "one two three"}]


def raw(srv, request: bytes) -> tuple[int, bytes]:
    """Send ``request`` as it is over a raw socket; (status, body)."""
    host, port = srv.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.settimeout(300)
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def post(path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\nContent-Type: "
            f"application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def test_metrics_is_refused_to_a_plain_key(make_server, upstream, tmp_path):  # noqa: F811
    srv, alice = gateway(make_server, tmp_path, {"up-echo": remote(upstream.url, "echo")}, "up-echo")
    r = httpx.get(srv.base_url + "/metrics", headers={"Authorization": f"Bearer {alice}"}, timeout=60)
    assert r.status_code == 403 and "reverb_" not in r.text
    err = r.json()["error"]
    assert (err["type"], err["code"], err["param"]) == ("permission_error", "permission_denied", None)
    row = wait_row(srv, r.headers["x-request-id"])
    assert (row["status"], row["error_code"], row["endpoint"]) == ("rejected", "permission_denied", "metrics")
    ok = httpx.get(srv.base_url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert ok.status_code == 200 and "reverb_requests_total" in ok.text
    # the same plain key is served everywhere else
    assert httpx.get(srv.base_url + "/v1/models", headers={"Authorization": f"Bearer {alice}"},
                     timeout=60).status_code == 200


def test_errors_quote_at_most_64_characters_of_a_clients_value(make_server, upstream, tmp_path):  # noqa: F811
    srv, _ = gateway(make_server, tmp_path, {"up-echo": remote(upstream.url, "echo")}, "up-echo")
    huge = "m" * 500_000
    for path in ("/v1/chat/completions", "/api/endpoint"):
        status, body = raw(srv, post(path, json.dumps({"model": huge, "messages": MESSAGES}).encode()))
        assert status == 404 and len(body) < 1024, body[:200]
        assert b"m" * 64 + b"..." in body and b"m" * 65 not in body
    status, body = raw(srv, f"GET /v1/models/{'n' * 20_000} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                            f"{KEY}\r\nConnection: close\r\n\r\n".encode())
    assert status == 404 and len(body) < 1024 and b"n" * 64 + b"..." in body
    # a field name: the gateway's unknown option, in the message and in param
    option = "o" * 100_000
    status, body = raw(srv, post("/api/endpoint", json.dumps({"model": "up-echo", "messages": MESSAGES,
                                                              "options": {option: 1}}).encode()))
    err = json.loads(body)["error"]
    assert status == 400 and len(body) < 1024 and err["param"] == "options." + "o" * 64 + "..."


def test_requests_cut_by_the_drain_timeout_are_logged_as_cancelled(make_server, upstream, tmp_path):  # noqa: F811
    srv, alice = gateway(make_server, tmp_path, {"up-slow": remote(upstream.url, "slow"),
                                                 "up-slow-mid": remote(upstream.url, "slow-mid")}, "up-slow",
                         "--drain-timeout", "1", "--log-format", "json")
    upstream.release.clear()
    answers: dict = {}

    def ask(name: str, body: dict) -> None:
        try:
            with httpx.Client(base_url=srv.base_url, headers={"Authorization": f"Bearer {alice}"},
                              timeout=300) as c:
                r = c.post("/v1/chat/completions", json=body)
                answers[name] = (r.status_code, r.headers.get("x-request-id"), r.content)
        except httpx.HTTPError as e:  # the started stream is cut when its task is cancelled
            answers[name] = (None, None, repr(e).encode())

    sent = len(upstream.requests)
    threads = [threading.Thread(target=ask, args=("blocking", {"model": "up-slow", "messages": MESSAGES})),
               threading.Thread(target=ask, args=("stream", {"model": "up-slow-mid", "messages": MESSAGES,
                                                             "stream": True}))]
    for t in threads:
        t.start()
    wait_for(lambda: len(upstream.requests) >= sent + 2, what="both requests at the upstream")
    try:
        assert srv.stop() == 0      # SIGTERM: the drain timeout passes, the requests are cancelled
    finally:
        upstream.release.set()
        for t in threads:
            t.join(300)
    status, rid, body = answers["blocking"]
    assert status == 503 and json.loads(body)["error"]["code"] == "overloaded", body
    log = srv.log()
    assert "Traceback" not in log and "Exception in ASGI application" not in log
    access = [json.loads(line) for line in log.splitlines() if line.startswith('{"ts"')]
    cancelled = [a for a in access if a["outcome"] == "cancelled"]
    assert len(cancelled) == 2 and all(a["error_code"] == "shutdown" for a in cancelled)
    assert {a["status"] for a in cancelled} == {503, 200}   # the stream had started
    with srv.ledger() as ledger:
        row = ledger.request(rid)
        assert row["status"] == "cancelled" and row["price"] == 0
        assert ledger.invariant()["ok"]
