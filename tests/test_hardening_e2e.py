"""Hostile files, browser attacks, slow and broken clients, and a ledger that cannot write: real servers."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import struct

import gguf
import httpx
import pytest

from reverb.errors import UnsafeModelFile
from reverb.models.ggufcheck import check

from .conftest import KEY, Server, chat, wait_for
from .gguf_edit import rewrite

U32 = gguf.GGUFValueType.UINT32
CVE_TEMPLATE = ("{% for x in ().__class__.__base__.__subclasses__() %}{% if 'warning' in x.__name__ %}"
                "{{ x()._module.__builtins__['__import__']('os').popen('touch PWNED') }}{% endif %}{% endfor %}")


def path_catalogue(tmp_path, gguf_path) -> str:
    toml = tmp_path / "models.toml"
    toml.write_text(f'default = "x"\n[models.x]\nsource = "path"\nfile = "{gguf_path.name}"\nctx = 512\n')
    return str(toml)


# -- model files ----------------------------------------------------------------------------------------------

def _header(tmp_path, body: bytes, name="bad.gguf"):
    p = tmp_path / name
    p.write_bytes(b"GGUF" + struct.pack("<I", 3) + body)
    return p


def _str(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


@pytest.mark.parametrize("body,what", [
    (b"", "past the end"),                                                         # truncated header
    (struct.pack("<QQ", 2**60, 0), "over the limit"),                              # absurd tensor count
    (struct.pack("<QQ", 0, 1) + struct.pack("<Q", 2**62), "over the limit"),       # absurd key length
    (struct.pack("<QQ", 0, 1) + _str(b"k") + struct.pack("<IIQ", 9, 4, 2**40), "over the limit"),  # huge array
    (struct.pack("<QQ", 0, 1) + _str(b"k") + struct.pack("<I", 77), "unknown GGUF value type"),
    (struct.pack("<QQ", 1, 0) + _str(b"t") + struct.pack("<I", 9), "dimensions"),
    (struct.pack("<QQ", 1, 0) + _str(b"t") + struct.pack("<IQIQ", 1, 32, 999, 0), "unknown type"),
    (struct.pack("<QQ", 1, 0) + _str(b"t") + struct.pack("<IQIQ", 1, 1 << 30, 0, 0), "outside the file"),
])
def test_precheck_refuses_malformed_headers(tmp_path, body, what):
    p = _header(tmp_path, body)
    with pytest.raises(UnsafeModelFile) as e:
        check(p)
    assert what in e.value.message


def test_precheck_refuses_bad_magic_truncation_and_non_files(tmp_path, model_path):
    (tmp_path / "m.gguf").write_bytes(b"GGML" + b"\0" * 100)
    with pytest.raises(UnsafeModelFile):
        check(tmp_path / "m.gguf")
    with open(model_path, "rb") as f:
        (tmp_path / "cut.gguf").write_bytes(f.read(4 << 20))  # the real header, most of the tensors missing
    with pytest.raises(UnsafeModelFile) as e:
        check(tmp_path / "cut.gguf")
    assert "outside the file" in e.value.message
    os.mkfifo(tmp_path / "fifo.gguf")
    with pytest.raises(UnsafeModelFile):
        check(tmp_path / "fifo.gguf")
    assert check(model_path)["tensors"] == 272


def test_file_that_crashes_llama_cpp_takes_down_a_child_not_the_server(tmp_path, model_path):
    # expert_used_count > expert_count passes the header check and aborts llama.cpp while it loads
    bad = rewrite(model_path, tmp_path / "crash.gguf",
                  {"llama.expert_count": (4, U32), "llama.expert_used_count": (8, U32)})
    check(bad)
    srv = Server(tmp_path / "srv", "--models", path_catalogue(tmp_path, bad), "--probe-models")  # as in production
    with pytest.raises(RuntimeError) as e:
        srv.start()
    assert "crashed (SIGABRT) in a trial load" in str(e.value)
    assert srv.proc.returncode == 2  # a clean error exit of the server, not a signal


def test_truncated_model_is_refused_before_llama_cpp(tmp_path, model_path):
    with open(model_path, "rb") as f:
        (tmp_path / "cut.gguf").write_bytes(f.read(4 << 20))
    srv = Server(tmp_path / "srv", "--models", path_catalogue(tmp_path, tmp_path / "cut.gguf"))
    with pytest.raises(RuntimeError) as e:
        srv.start()
    assert "outside the file" in str(e.value) and "Traceback" not in str(e.value)


# One case per sandbox rule a GGUF's template breaks at load, end to end: an attribute escape (the CVE's shape) and
# the render deadline. Other escapes (cycler's globals among them) reach the same rule: tests/test_templates.py.
@pytest.mark.parametrize("template", [
    CVE_TEMPLATE,
    "{% for i in range(99999) %}{% for j in range(99999) %}{{ i }}{% endfor %}{% endfor %}",
])
def test_gguf_with_hostile_template_is_refused_at_load(tmp_path, model_path, template):
    bad = rewrite(model_path, tmp_path / "evil.gguf", {"tokenizer.chat_template": template})
    srv = Server(tmp_path / "srv", "--models", path_catalogue(tmp_path, bad), "--probe-models")
    with pytest.raises(RuntimeError) as e:
        srv.start()
    assert "chat template is unsafe" in str(e.value)
    assert not list(tmp_path.rglob("PWNED")) and not (srv.workdir.parent.parent / "PWNED").exists()


# -- browsers ------------------------------------------------------------------------------------------------

def test_dns_rebinding_host_is_refused(server):
    r = httpx.post(server.base_url + "/v1/chat/completions", json=chat("x", max_tokens=1),
                   headers={"Authorization": f"Bearer {KEY}", "Host": "evil.example:80"}, timeout=300)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host"
    assert httpx.get(server.base_url + "/health", headers={"Host": "localhost"}, timeout=300).status_code == 200


def test_no_cors_by_default_and_forms_refused(server):
    with server.client() as http:
        r = http.post("/v1/chat/completions", json=chat("x", max_tokens=1), headers={"Origin": "https://a.example"})
        assert "access-control-allow-origin" not in r.headers
        pre = http.options("/v1/chat/completions", headers={"Origin": "https://a.example",
                                                             "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in pre.headers
        for ctype in ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x"):
            r = http.post("/api/endpoint", content=b'{"model":"smollm2-135m"}', headers={"content-type": ctype})
            assert r.status_code == 415 and r.json()["status"] == 0


# One shared server for the four tests below (each flag matters to one of them; none to the others' requests):
# a server start is ~1 s of CPU.
EDGE = ("--cors-origin", "https://app.example", "--max-body-bytes", "4096", "--parallel", "2", "--body-timeout", "1")


def test_configured_cors_origin(shared_server):
    srv = shared_server(*EDGE)
    pre = httpx.options(srv.base_url + "/v1/chat/completions",
                        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}, timeout=300)
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-credentials" not in pre.headers
    other = httpx.options(srv.base_url + "/v1/chat/completions",
                          headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
                          timeout=300)
    assert "access-control-allow-origin" not in other.headers


def test_chunked_body_over_the_limit_is_refused_while_streaming_in(shared_server):
    srv = shared_server(*EDGE)
    sent = []

    def body():
        for _ in range(1000):  # up to 1 MB, far over the 4 KB limit; no Content-Length: chunked
            sent.append(1)
            yield b" " * 1024

    with srv.client() as http:
        r = http.post("/v1/chat/completions", content=body(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


# -- slow and broken clients ---------------------------------------------------------------------------------

def _raw(srv, payload: bytes, path="/v1/chat/completions", rcvbuf=None, headers_only=False) -> socket.socket:
    host, port = srv.base_url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode()
    s.sendall(head if headers_only else head + payload)
    return s


def _answered(srv) -> bool:
    """A normal request is answered: whatever else is going on does not hold it up."""
    r = httpx.post(srv.base_url + "/v1/chat/completions", json=chat("Say yes.", max_tokens=4),
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=300)
    return r.status_code == 200


def test_client_that_never_reads_does_not_hold_up_others(shared_server, no_eos):
    # The kernel buffers up to 4 MB per loopback connection, more than the tiny model can write in one answer;
    # the write-timeout abort itself is tested at the ASGI seam (tests/test_stream_seam.py). With one slot taken
    # by the client that never reads, the other slot still serves.
    srv = shared_server(*EDGE)   # --parallel 2
    body = json.dumps(chat("Write a long essay.", max_tokens=1500, stream=True, logit_bias=no_eos)).encode()
    s = _raw(srv, body, rcvbuf=1024)
    try:
        wait_for(lambda: srv.stats()["active"] >= 1, what="the non-reading stream to run")
        assert _answered(srv)
        assert srv.stats()["active"] >= 1  # ... while that stream still holds its slot
    finally:
        s.close()


def test_slow_body_gets_408_and_slow_headers_block_no_one(shared_server):
    srv = shared_server(*EDGE)   # --body-timeout 1
    s = _raw(srv, b'{"model": "smollm2-135m"}', headers_only=True)  # headers done, body never comes
    lingering = []
    try:
        s.settimeout(300)
        assert b" 408 " in s.recv(4096).split(b"\r\n")[0]
        host, port = srv.base_url.removeprefix("http://").split(":")
        for _ in range(50):  # slowloris: many connections that never finish their headers
            c = socket.create_connection((host, int(port)))
            c.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            lingering.append(c)
        assert _answered(srv)
    finally:
        s.close()
        for c in lingering:
            c.close()


# -- the ledger cannot write ----------------------------------------------------------------------------------

def test_locked_ledger_at_settle_time_fails_closed_then_recovers(make_server, no_eos):
    srv = make_server("--lease-seconds", "3", env={"REVERB_DB_BUSY_TIMEOUT": "0.3"})  # retries every second
    key = None
    with srv.ledger() as ledger:
        key = ledger.create_key("locked", 1_000_000)
    lines = []
    with httpx.Client(base_url=srv.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions",
                         json=chat("Write an essay.", max_tokens=60, stream=True, logit_bias=no_eos)) as r:
            it = r.iter_lines()
            lines.append(next(it))
            locker = sqlite3.connect(srv.db, timeout=5, isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock when the job settles
            try:
                lines += list(it)
            finally:
                locker.execute("ROLLBACK")
                locker.close()
        assert "data: [DONE]" not in lines  # no success without its ledger row
        last = json.loads([ln for ln in lines if ln.startswith("data: {")][-1][6:])
        assert last["error"]["code"] == "ledger_unavailable"
        g = http.post("/api/endpoint", json={"model": "smollm2-135m", "messages": [{"role": "user", "content": "x"}],
                                             "options": {"max_tokens": 3}})
        assert g.status_code == 200  # the lock is gone: service continues
    rid = r.headers["x-request-id"]
    with srv.ledger() as ledger:  # the server settles the request itself once it can: failed, charged the stream
        row = wait_for(lambda: ledger.request(rid), what="the server's own retry of the settlement")
        inv = ledger.invariant()
    assert row["status"] == "failed" and row["error_code"] == "ledger_unavailable" and row["price"] > 0
    assert inv["ok"] and inv["holds"] == 0


def test_full_ledger_fails_closed(make_server):
    # --db-max-mb caps the ledger: once SQLite reports SQLITE_FULL no request may claim success
    srv = make_server("--db-max-mb", "0.07", "--log-bodies")  # an empty ledger is 11 pages (44 KB)
    ok = []
    refused = None
    big = "padding " * 120  # bodies are logged, so each request grows the ledger by ~1 KB
    with srv.client() as http:
        for _ in range(200):
            r = http.post("/api/endpoint", json={"model": "smollm2-135m", "options": {"max_tokens": 1},
                                                 "messages": [{"role": "user", "content": big}]})
            if r.status_code == 200:
                ok.append(r.headers["x-request-id"])
            else:
                refused = r
                break
    assert refused is not None and refused.status_code == 503
    assert refused.json()["error"]["code"] == "ledger_unavailable" and refused.headers["retry-after"]
    with srv.ledger() as ledger:
        assert all(ledger.request(rid)["status"] == "completed" for rid in ok)  # every success has its row


def test_read_only_ledger_at_settle_time_fails_closed(make_server, no_eos):
    import subprocess
    srv = make_server()
    wal = srv.db.with_name(srv.db.name + "-wal")
    lines = []
    try:
        with srv.client() as http:
            with http.stream("POST", "/v1/chat/completions",
                             json=chat("Write an essay.", max_tokens=50, stream=True, logit_bias=no_eos)) as r:
                it = r.iter_lines()
                lines.append(next(it))
                # the files become immutable, even for root: every write to the ledger now fails
                subprocess.run(["chattr", "+i", str(srv.db), str(wal)], check=True)
                lines += list(it)
    finally:
        subprocess.run(["chattr", "-i", str(srv.db), str(wal)], check=False)
    assert "data: [DONE]" not in lines
    last = json.loads([ln for ln in lines if ln.startswith("data: {")][-1][6:])
    assert last["error"]["code"] == "ledger_unavailable"


def test_precheck_refuses_files_that_are_not_models_and_bounds_its_work(tmp_path):
    with pytest.raises(UnsafeModelFile) as e:
        check(_header(tmp_path, struct.pack("<QQ", 0, 0)))
    assert "no tensors" in e.value.message
    arch_less = struct.pack("<QQ", 1, 0) + _str(b"t") + struct.pack("<IQIQ", 1, 32, 0, 0) + b"\0" * 160
    with pytest.raises(UnsafeModelFile) as e:
        check(_header(tmp_path, arch_less))
    assert "architecture" in e.value.message
    # Two arrays of 3 M empty strings: each within the per-array size, together over the file-wide count.
    n = 3 << 20
    bomb = tmp_path / "bomb.gguf"
    with open(bomb, "wb") as f:
        f.write(b"GGUF" + struct.pack("<I", 3) + struct.pack("<QQ", 1, 2))
        for key in (b"a", b"b"):
            f.write(_str(key) + struct.pack("<IIQ", 9, 8, n) + b"\0" * (8 * n))
    with pytest.raises(UnsafeModelFile) as e:
        check(bomb)
    assert "over the limit" in e.value.message
