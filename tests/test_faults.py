"""Test-only faults and the journal (api/faults.py) through the real app over a fake backend: fast, no model."""

from __future__ import annotations

import json

import jsonschema
import pytest
from starlette.testclient import TestClient

from reverb import service as service_mod
from reverb.api.app import create_app
from reverb.api.metrics import Metrics
from reverb.api.faults import parse_fault
from reverb.api.openapi import schemas
from reverb.errors import InvalidRequest
from reverb.ledger import Ledger
from reverb.settings import Settings
from reverb.testkit.usage import Prices, Usage, over_budget, parse_prices

from .fakes import fake_llama

SECRET = "s3cret"
CFG = Settings.build(environ={}, api_keys=("k",), parallel=2, max_tokens_cap=64, test_control=SECRET)
SCHEMAS = schemas(CFG)
CHAT = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
GATEWAY = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}], "options": {"max_tokens": 2}}


def app_client(tmp_path, **changes):
    svc = service_mod.build(CFG.with_(db=tmp_path / "ledger.sqlite3", **changes), backend_factory=fake_llama,
                            hooks=Metrics)
    return TestClient(create_app(svc.settings, service=svc), base_url="http://127.0.0.1",
                      raise_server_exceptions=False)


@pytest.fixture
def http(tmp_path):
    with app_client(tmp_path) as c:
        control(c, "watch", {"key": "k"})
        yield c


def control(http, action, body, secret=SECRET):
    return http.post(f"/_reverb/{action}", json=body, headers={"X-Reverb-Control": secret})



def auth(k="k"):
    return {"Authorization": f"Bearer {k}"}


@pytest.mark.parametrize("path,body,schema", [("/v1/chat/completions", CHAT, "OpenAIError"),
                                              ("/v1/completions", {"model": "smollm2-135m", "prompt": "x",
                                                                   "max_tokens": 2}, "OpenAIError"),
                                              ("/api/endpoint", GATEWAY, "GatewayError")])
@pytest.mark.parametrize("kind,status,code", [
    ("429", 429, "rate_limit_exceeded"), ("500", 500, "engine_error"), ("502", 502, "upstream_unavailable"),
    ("503", 503, "overloaded"), ("504", 504, "upstream_timeout"),
    ("insufficient_quota", 429, "insufficient_quota"), ("context_length_exceeded", 400, "context_length_exceeded")])
def test_each_status_fault_in_each_dialects_own_format(http, path, body, schema, kind, status, code):
    assert control(http, "faults", {"key": "k", "fault": {"kind": kind, "retry_after": 3}}).json() == {"ok": True}
    r = http.post(path, json=body, headers=auth())
    jsonschema.validate(r.json(), SCHEMAS[schema])
    if schema == "GatewayError":
        status = 402 if kind == "insufficient_quota" else status
        code = "insufficient_credit" if kind == "insufficient_quota" else code
    assert r.status_code == status
    assert r.json()["error"]["code"] == code
    assert r.headers.get("retry-after") == ("3" if kind in ("429", "503") else None)
    assert http.post(path, json=body, headers=auth()).status_code == 200   # times defaults to 1


def test_the_next_k_requests_then_none(http):
    control(http, "faults", {"key": "k", "fault": {"kind": "503", "times": 2}})
    assert [http.post("/v1/chat/completions", json=CHAT, headers=auth()).status_code for _ in range(3)] == \
        [503, 503, 200]


def test_a_seeded_fraction_repeats_exactly(http):
    def pattern():
        control(http, "reset", {"key": "k"})
        control(http, "faults", {"key": "k", "fault": {"kind": "500", "rate": 0.5, "seed": 7}})
        return [http.post("/v1/embeddings", json={"model": "smollm2-135m", "input": "x"}, headers=auth()).status_code
                for _ in range(16)]
    first = pattern()
    assert first == pattern() and set(first) == {200, 500}


def test_faults_are_scoped_to_one_key(http, tmp_path):
    other = Ledger(tmp_path / "ledger.sqlite3").create_key("other", 10**9)
    control(http, "faults", {"key": other, "fault": {"kind": "429", "times": 5}})
    assert http.post("/v1/chat/completions", json=CHAT, headers=auth()).status_code == 200
    assert http.post("/v1/chat/completions", json=CHAT, headers=auth(other)).status_code == 429
    assert [e["fault"] for e in control(http, "journal", {"key": other}).json()["requests"]] == ["429"]


def test_the_journal_holds_bodies_and_headers_but_no_key(http):
    http.post("/v1/chat/completions", json=CHAT, headers={**auth(), "X-Trace": "abc"})
    control(http, "faults", {"key": "k", "fault": {"kind": "429", "retry_after": 2}})
    http.post("/v1/chat/completions", json=CHAT, headers=auth())
    journal = control(http, "journal", {"key": "k"}).json()["requests"]
    assert [(e["path"], e["status"], e["fault"]) for e in journal] == \
        [("/v1/chat/completions", 200, None), ("/v1/chat/completions", 429, "429")]
    assert journal[0]["body"] == CHAT and journal[0]["headers"]["x-trace"] == "abc"
    assert journal[1]["headers_out"]["retry-after"] == "2"
    assert journal[0]["t"] <= journal[0]["t_response"] <= journal[0]["t_end"] <= journal[1]["t"]
    assert not any(k in e["headers"] for e in journal for k in ("authorization", "x-reverb-control"))
    control(http, "reset", {"key": "k"})
    assert control(http, "journal", {"key": "k"}).json()["requests"] == []
    http.post("/v1/chat/completions", json=CHAT, headers=auth())
    assert len(control(http, "journal", {"key": "k"}).json()["requests"]) == 1   # still registered after reset
    control(http, "forget", {"key": "k"})
    http.post("/v1/chat/completions", json=CHAT, headers=auth())
    assert control(http, "journal", {"key": "k"}).json()["requests"] == []


def test_an_unregistered_keys_requests_are_not_read_or_kept(tmp_path):
    with app_client(tmp_path) as http:
        http.post("/v1/chat/completions", json=CHAT, headers=auth())
        assert control(http, "journal", {"key": "k"}).json()["requests"] == []


def test_control_needs_its_secret_and_checks_every_field(http):
    assert control(http, "faults", {"key": "k", "fault": {"kind": "429"}}, secret="wrong").status_code == 401
    assert http.post("/_reverb/faults", json={"key": "k"}, headers=auth()).status_code == 401  # an API key is not it
    for bad, param in [({"kind": "418"}, "fault.kind"), ({"kind": "429", "times": -1}, "fault.times"),
                       ({"kind": "429", "rate": 2}, "fault.rate"),
                       ({"kind": "stall", "seconds": "x"}, "fault.seconds"),
                       ({"kind": "429", "retry_after": True}, "fault.retry_after"),
                       ({"kind": "429", "evil": 1}, "fault"), ("429", "fault")]:
        r = control(http, "faults", {"key": "k", "fault": bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (bad, r.text)
    assert control(http, "faults", {"fault": {"kind": "429"}}).json()["error"]["param"] == "key"
    assert http.post("/_reverb/faults", content=b"\xff{", headers={"X-Reverb-Control": SECRET}).status_code == 400
    assert control(http, "nothing", {"key": "k"}).status_code == 404


def test_without_the_flag_there_is_no_control_route(tmp_path):
    with app_client(tmp_path, test_control="") as http:
        assert control(http, "faults", {"key": "k", "fault": {"kind": "429"}}).status_code == 401
        r = http.post("/_reverb/faults", json={"key": "k", "fault": {"kind": "429"}},
                      headers={**auth(), "X-Reverb-Control": SECRET})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_parse_fault_defaults():
    f = parse_fault({"kind": "truncate", "after": 3})
    assert (f.kind, f.times, f.rate, f.after) == ("truncate", 1, None, 3)
    assert parse_fault({"kind": "500", "rate": 0.25}).times is None
    with pytest.raises(InvalidRequest):
        parse_fault({"kind": "500", "after": 1.5})


def test_prices_and_budgets():
    assert parse_prices("") is None
    p = parse_prices("input=2.50, output=10")
    assert p.cost(1_000_000, 100_000) == 3.5 and p == Prices(p.input, p.output)
    for bad in ("input=1,input=2", "cost=3", "input", "input=-1", "output=nan"):
        with pytest.raises(ValueError):
            parse_prices(bad)
    u = Usage(requests=2, prompt_tokens=10, completion_tokens=5, cost=0.5)
    assert over_budget(u, tokens=15, requests=2, cost=0.5) is None
    assert "16" not in (over_budget(u, tokens=14) or "") and "15 tokens used" in over_budget(u, tokens=14)
    assert "2 requests used" in over_budget(u, requests=1) and "cost" in over_budget(u, cost=0.1)


def test_replay_matching_ignores_ids_times_and_whitespace():
    from reverb.api.replay import Cassette, request_key
    body = {"model": "m", "user": "u1", "messages": [
        {"role": "assistant", "tool_calls": [{"id": "call_abc123XYZ", "function": {"name": "f"}}]},
        {"role": "tool", "tool_call_id": "call_abc123XYZ", "content": "at 2026-12-05T17:40:52Z, id 7f9c2e7b-..."},
        {"role": "user", "content": " Hello\n  world "}]}
    same = json.loads(json.dumps(body))
    same["user"], same["messages"][0]["tool_calls"][0]["id"] = "u2", "call_zzz999QQQ"
    same["messages"][1].update(tool_call_id="call_zzz999QQQ", content="at 2027-01-01T00:00:00.5+01:00, id 7f9c2e7b-...")
    same["messages"][2]["content"] = "Hello world"
    assert request_key("POST", "/v1/chat/completions", body) == request_key("POST", "/v1/chat/completions", same)
    changed = json.loads(json.dumps(same))
    changed["messages"][2]["content"] = "Hello there"
    assert request_key("POST", "/v1/chat/completions", changed) != request_key("POST", "/v1/chat/completions", body)
    resp = {"status": 200, "headers": {"content-type": "text/event-stream", "x-request-id": "req_1"},
            "chunks": ["data: 1\n\n", {"base64": "AP8="}]}
    request = {"method": "POST", "path": "/p", "body": body}
    c = Cassette([{"request": request, "response": resp}, {"request": request, "response": {**resp, "status": 201}}],
                 "m")
    assert [c.match("POST", "/p", same)[1] for _ in range(3)] == [200, 201, 201]   # in order, then the last again
    assert c.match("POST", "/p", changed) is None and c.match("POST", "/q", same) is None
    entry = c.match("POST", "/p", same)
    assert entry[2] == [(b"content-type", b"text/event-stream")] and entry[3] == [b"data: 1\n\n", b"\x00\xff"]


def test_a_cassette_replays_through_the_app_and_a_miss_goes_to_the_local_model(http):
    recorded = {"status": 200, "headers": {"content-type": "application/json"}, "chunks": ['{"answer": ', '"x"}']}
    body = {**CHAT, "model": "gpt-somewhere"}
    r = control(http, "cassette", {"key": "k", "model": "smollm2-135m", "interactions": [
        {"request": {"method": "POST", "path": "/v1/chat/completions", "body": body}, "response": recorded}]})
    assert r.json() == {"ok": True}
    assert http.post("/v1/chat/completions", json=body, headers=auth()).json() == {"answer": "x"}
    miss = http.post("/v1/chat/completions", json={**body, "max_tokens": 3}, headers=auth())
    assert miss.status_code == 200 and miss.json()["model"] == "smollm2-135m"
    assert [e["replay"] for e in control(http, "journal", {"key": "k"}).json()["requests"]] == ["hit", "miss"]
    assert control(http, "cassette", {"key": "k", "interactions": [{"request": {}}]}).status_code == 400
    assert control(http, "cassette", {"key": "k", "interactions": "no"}).status_code == 400


def test_the_journal_keeps_a_hostile_body_as_text(http):
    for raw in (b'{"a": NaN}', b"[" * 100_000, b"\xff\xfe{"):
        r = http.post("/v1/chat/completions", content=raw, headers={**auth(), "Content-Type": "application/json"})
        assert r.status_code == 400
    journal = control(http, "journal", {"key": "k"})
    assert journal.status_code == 200
    assert [type(e["body"]) for e in journal.json()["requests"]] == [str, str, str]
