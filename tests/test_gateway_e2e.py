"""The gateway dialect and the ledger end to end: real server, real model, real SQLite file."""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import pytest

from reverb.models import registry
from reverb.ledger import Ledger

from .conftest import prompt_tokens, reverb, wait_for

SPEC = registry.load(registry.Path(__file__).resolve().parent.parent / "models.toml").resolve("smollm2-135m")
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Tell me a joke."}]


def gw(messages=MESSAGES, **options) -> dict:
    return {"model": "smollm2-135m", "messages": messages, "options": options}


def new_key(server, name: str, credit: str) -> str:
    out = reverb("keys", "create", name, "--credit", credit, "--db", str(server.db))
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def wait_row(server, request_id: str) -> dict:
    with server.ledger() as ledger:
        return wait_for(lambda: ledger.request(request_id), what=f"the ledger row of {request_id}")


def test_shape_with_stats(server, engine):
    key = new_key(server, "shape", "1")
    with server.client(key) as http:
        r = http.post("/api/endpoint", json=gw(max_tokens=6, temperature=0))
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == 1
    res = body["result"]
    assert set(res) == {"response", "tokens_input", "tokens_output", "price", "model", "request"}
    assert res["request"] == MESSAGES and res["model"] == "smollm2-135m" and res["response"]
    assert res["tokens_input"] == prompt_tokens(engine, MESSAGES)
    assert 0 < res["tokens_output"] <= 6
    charged = SPEC.cost(res["tokens_input"], res["tokens_output"])
    assert res["price"] == pytest.approx(charged / 1e6, abs=1e-12)
    row = wait_row(server, r.headers["x-request-id"])
    assert row["price"] == charged and row["status"] == "completed" and row["endpoint"] == "gateway"
    assert row["body"] is None  # bodies are stored only with --log-bodies


def test_shape_without_stats(server):
    with server.client() as http:
        r = http.post("/api/endpoint", json=gw(max_tokens=5, stats=False))
    assert set(r.json()["result"]) == {"response", "model", "request"}


def test_streaming_is_plain_text_and_matches(server):
    body = gw(max_tokens=10, temperature=0)
    with server.client() as http:
        whole = http.post("/api/endpoint", json=body).json()["result"]["response"]
        pieces = []
        with http.stream("POST", "/api/endpoint", json=gw(max_tokens=10, temperature=0, stream=True)) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/plain")
            for piece in r.iter_text():
                pieces.append(piece)
    assert "".join(pieces) == whole and len(pieces) >= 2
    assert "status" not in "".join(pieces)[-40:]  # no final JSON


# The gateway's error format for bad bodies: tests/test_errors_inproc.py (no model needed).


def test_unknown_and_revoked_keys(server):
    key = new_key(server, "revoke-me", "1")
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=300) as http:
        assert http.post("/api/endpoint", json=gw(max_tokens=2)).status_code == 200
        assert reverb("keys", "revoke", "revoke-me", "--db", str(server.db)).returncode == 0
        r = http.post("/api/endpoint", json=gw(max_tokens=2))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(server.base_url + "/api/endpoint", json=gw(), headers={"Authorization": "Bearer rk-unknown"},
                   timeout=300)
    assert r.status_code == 401 and r.json()["status"] == 0
    assert "WWW-Authenticate" in r.headers


def test_keys_are_stored_as_digests_only(server):
    key = new_key(server, "digest-only", "1")
    raw = server.db.read_bytes() + (server.db.parent / (server.db.name + "-wal")).read_bytes()
    assert key.encode() not in raw
    listing = reverb("keys", "list", "--db", str(server.db)).stdout
    assert "digest-only" in listing and key not in listing


def test_insufficient_credit_in_both_dialects(server):
    key = new_key(server, "poor", "0.000001")
    with server.client(key) as http:
        r = http.post("/api/endpoint", json=gw(max_tokens=200))
        assert r.status_code == 402 and r.json()["error"]["code"] == "insufficient_credit"
        r = http.post("/v1/chat/completions", json={"model": "smollm2-135m", "messages": MESSAGES,
                                                    "max_tokens": 200})
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "insufficient_quota"
        assert r.headers["x-should-retry"] == "false"


def test_credit_for_exactly_one_of_many_concurrent(server, engine):
    n_prompt = prompt_tokens(engine, MESSAGES)
    hold = SPEC.cost(n_prompt, 4)
    key = new_key(server, "exactly-one", registry.format_money(hold))

    def call(_):
        with server.client(key) as http:
            return http.post("/api/endpoint", json=gw(max_tokens=4)).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(call, range(8)))
    assert sorted(codes) == [200] + [402] * 7
    with server.ledger() as ledger:
        assert ledger.invariant()["ok"]
        assert [k for k in ledger.list_keys() if k["name"] == "exactly-one"][0]["held"] == 0


def test_disconnect_mid_stream_charges_only_what_was_produced(server, engine, no_eos):
    key = new_key(server, "leaver", "1")
    with server.client(key) as http:
        with http.stream("POST", "/v1/chat/completions", json={
                "model": "smollm2-135m", "messages": MESSAGES, "max_tokens": 1000, "stream": True,
                "temperature": 0.8, "seed": 3, "logit_bias": no_eos}) as r:
            rid = r.headers["x-request-id"]
            seen = 0
            for line in r.iter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    seen += 1
                if seen >= 3:
                    break
    row = wait_row(server, rid)
    assert row["status"] == "cancelled"
    assert 3 <= row["completion_tokens"] < 1000
    assert row["price"] == SPEC.cost(row["prompt_tokens"], row["completion_tokens"])
    with server.ledger() as ledger:
        k = [k for k in ledger.list_keys() if k["name"] == "leaver"][0]
        assert k["held"] == 0 and k["balance"] == 1_000_000 - row["price"]


def test_usage_report_agrees_with_responses(server):
    key = new_key(server, "reporter", "1")
    total_in = total_out = total_price = 0
    with server.client(key) as http:
        for i in range(3):
            res = http.post("/api/endpoint", json=gw(max_tokens=2 + i)).json()["result"]
            total_in += res["tokens_input"]
            total_out += res["tokens_output"]
            total_price += round(res["price"] * 1e6)
    out = reverb("usage", "--key", "reporter", "--db", str(server.db))
    assert out.returncode == 0, out.stderr
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("reporter")][0].split()
    assert line[1] == "smollm2-135m" and int(line[2]) == 3 and int(line[3]) == 3
    assert int(line[7]) == total_in and int(line[8]) == total_out
    assert registry.parse_money(line[9]) == total_price
    assert "reporter" not in reverb("usage", "--key", "reporter", "--since", "2999-01-01",
                                    "--db", str(server.db)).stdout.split("\n", 1)[1]


def test_kill_9_mid_stream_is_settled_by_the_next_start(make_server, no_eos):
    srv = make_server("--lease-seconds", "2")
    key = new_key(srv, "crash", "1")
    with srv.client(key) as http:
        with http.stream("POST", "/api/endpoint", json=gw(max_tokens=1500, stream=True, logit_bias=no_eos)) as r:
            rid = r.headers["x-request-id"]
            body = r.iter_raw()   # kept: a dropped iterator closes the connection, and the server cancels
            next(body)
            with Ledger(srv.db) as ledger:   # wait until the stream has recorded what it delivered
                wait_for(lambda: any(h["delivered_tokens"] for h in ledger.holds()), what="a delivered-token mark")
            srv.kill()
    with Ledger(srv.db) as ledger:
        assert ledger.invariant()["holds"] > 0 and ledger.invariant()["ok"]
        mark = ledger.holds()[0]["delivered_tokens"]
    srv.start()  # the next start settles what the crash left, once the dead server's lease has expired
    row = wait_row(srv, rid)
    with Ledger(srv.db) as ledger:
        inv = ledger.invariant()
        k = [k for k in ledger.list_keys() if k["name"] == "crash"][0]
    assert inv["ok"] and inv["holds"] == 0
    assert row["status"] == "failed" and row["error_code"] == "interrupted"
    assert row["completion_tokens"] == mark > 0 and row["price"] == SPEC.cost(row["prompt_tokens"], mark)
    assert k["balance"] == 1_000_000 - row["price"]


def test_log_bodies_flag(shared_server):
    srv = shared_server("--log-bodies")
    with srv.client() as http:
        r = http.post("/api/endpoint", json=gw(max_tokens=2))
    row = wait_row(srv, r.headers["x-request-id"])
    assert json.loads(row["body"])["messages"] == MESSAGES
