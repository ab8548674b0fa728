"""Fast checks of the relay rules (issue 20, items 5 and 7): the key scrubbed from any field, Retry-After clamped,
the byte bound and the usage check, the 64-character quote, and who may read /metrics."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from reverb import service as service_mod
from reverb.api.app import create_app
from reverb.api.metrics import Metrics
from reverb.backends.upstream import wire
from reverb.backends.upstream.relay import Relay
from reverb.errors import InvalidRequest, ModelNotFound, UpstreamError, quote, quote_path, retry_after
from reverb.request import Account
from reverb.settings import Settings
from reverb.types import Usage

from .fakes import fake_llama

SECRET = "sk-up-" + "k" * 20


def test_the_key_is_scrubbed_from_every_string_and_object_key():
    event = {"id": SECRET, "choices": [{"index": 0, "delta": {"content": f"a {SECRET} b"}}],
             "x": {SECRET: [1, f"Bearer {SECRET}", None, True]}}
    out = wire.scrub_all(event, SECRET)
    assert SECRET not in json.dumps(out)
    assert out["x"] == {"***": [1, "Bearer ***", None, True]} and out["choices"][0]["delta"]["content"] == "a *** b"
    clean = {"id": "x", "choices": []}
    assert wire.scrub_all(clean, SECRET) is clean   # nothing to scrub: the same object, no copy
    deep: list = []
    for _ in range(wire.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(UpstreamError):
        wire.scrub_all({"choices": deep}, SECRET)


def test_an_error_whose_code_type_or_param_is_the_key_passes_none_of_them_on():
    body = json.dumps({"error": {"message": f"bad key {SECRET}", "code": SECRET, "type": SECRET,
                                 "param": SECRET}}).encode()
    e = wire.error_for(400, body, "m", SECRET, None)
    assert e.code == "upstream_rejected" and e.type is None and e.param == "***" and SECRET not in e.message


@pytest.mark.parametrize("header,expected", [
    ("7", 7), ("0", 0), ("60", 60), ("99999", 60), ("9" * 60, 60), (None, None), ("soon", None), ("-5", None),
    ("Fri, 01 Jan 2100 00:00:00 GMT", 60), ("Thu, 01 Jan 1970 00:00:00 GMT", 0),
])
def test_retry_after_is_clamped_to_a_minute(header, expected):
    assert retry_after(wire.error_for(429, b"{}", "m", SECRET, header)) == expected


def test_a_date_within_the_minute_gives_its_seconds():
    assert wire.parse_retry_after("Thu, 01 Jan 1970 00:00:30 GMT", now=0) == 30


def relay(choices: int = 1, max_tokens: int = 4) -> Relay:
    return Relay("m", SECRET, choices, max_tokens, prompt_estimate=10, prompt_floor=2, prompt_bound=40)


def event(text: str, index: int = 0, finish=None) -> dict:
    return {"choices": [{"index": index, "delta": {"content": text}, "finish_reason": finish}]}


def test_a_choice_is_cut_at_max_tokens_times_16_bytes_and_billed_at_most_max_tokens():
    r = relay(max_tokens=4)
    out = r.admit(event("x" * 60), 80)
    assert out["choices"][0]["finish_reason"] is None and not r.cut
    out = r.admit(event("é" * 10), 40)             # 20 bytes; 4 bytes of room left: two whole characters
    assert out["choices"][0]["delta"]["content"] == "éé" and out["choices"][0]["finish_reason"] == "length"
    assert r.cut and r.done and r.admit(event("more"), 10) is None
    assert r.usage(Usage(10, 2)) == Usage(10, 4)   # after a cut the upstream's figures are not used


def test_choices_are_bounded_each_and_an_unasked_index_is_malformed():
    r = relay(choices=2, max_tokens=1)
    r.admit(event("a" * 16, 0), 30)
    assert r.admit(event("b", 0), 10) is not None and r.finished[0]
    assert not r.done and r.admit(event("c", 1, "stop"), 10) is not None and r.done
    with pytest.raises(UpstreamError):
        relay(choices=2).admit(event("x", 2), 10)


def test_reported_usage_is_checked_against_what_was_relayed():
    r = relay(max_tokens=100)
    r.admit(event("y" * 320), 400)                    # 320 bytes: at least 20 tokens, estimated 107 (max 100)
    assert r.usage(Usage(12, 50)) == Usage(12, 50)    # plausible: kept
    assert r.usage(Usage(12, 0)) == Usage(12, 100)    # fewer tokens than the bytes allow
    assert r.usage(Usage(10 ** 9, 10 ** 9)) == Usage(10, 100)
    assert r.usage(Usage(0, 50)) == Usage(10, 50)     # a prompt of 0 tokens
    assert r.usage(None) == r.local() == Usage(10, 100)


def test_events_are_bounded_too():
    r = relay(max_tokens=1)
    assert r.admit({"choices": [{"index": 0, "delta": {}}]}, 60_000) is not None
    assert r.admit({"choices": [{"index": 0, "delta": {}}]}, 10_000) is None and r.cut and r.done


def test_quote_keeps_the_first_64_characters():
    assert quote("a" * 64) == "a" * 64 and quote("a" * 500_000) == "a" * 64 + "..."
    assert quote("x\ud800\n") == "x\\ud800\\n"
    assert quote_path("options." + "k" * 1000 + ".type") == "options." + "k" * 64 + "....type"
    assert len(quote_path(".".join(["ab"] * 10_000))) <= 4 * 64 + 3
    assert InvalidRequest("bad", param="z" * 5000).param == "z" * 64 + "..."
    e = service_mod.registry_mod.Registry(None, "m", {}).resolve
    with pytest.raises(ModelNotFound) as info:
        e("n" * 100_000)
    assert "n" * 64 + "..." in info.value.message and "n" * 65 not in info.value.message


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"p" * 300: {"type": "string", "k" * 300: 1}}},
    {"type": "object", "properties": {}, "required": ["r" * 300]},
    {"type": "string", "format": "f" * 300},
    {"$ref": "#/$defs/" + "d" * 300},
])
def test_schema_errors_quote_at_most_64_characters(schema):
    from reverb.grammar import check_schema
    with pytest.raises(InvalidRequest) as info:
        check_schema(schema, "response_format.json_schema.schema")
    for text in (info.value.message, info.value.param):
        assert not any(c * 65 in text for c in "pkrfd"), text


def test_operators_are_admin_or_dev_keys():
    assert Account("dev", None, unlimited=True).operator and Account("ops", 3, admin=True).operator
    assert not Account("alice", 4).operator


CFG = Settings.build(environ={}, api_keys=("dev-key",), parallel=1)


@pytest.fixture
def app_client(tmp_path):
    def make(peer: str = "testclient", **settings):
        svc = service_mod.build(CFG.with_(db=tmp_path / "ledger.sqlite3", **settings), backend_factory=fake_llama,
                                hooks=Metrics)
        plain = svc.ledger.create_key("alice", 1_000_000)
        real = svc.authenticate

        async def authenticate(raw):  # an admin key, as team-gateway's ledger will make them
            return Account("ops", 99, admin=True) if raw == "admin-key" else await real(raw)
        svc.authenticate = authenticate
        client = TestClient(create_app(svc.settings, service=svc), base_url="http://127.0.0.1",
                            client=(peer, 40000), raise_server_exceptions=False)
        return client, plain
    return make


def test_metrics_needs_an_operator_key(app_client):
    client, plain = app_client()
    with client:
        r = client.get("/metrics", headers={"Authorization": f"Bearer {plain}"})
        assert r.status_code == 403
        assert r.json() == {"error": {"message": r.json()["error"]["message"], "type": "permission_error",
                                      "param": None, "code": "permission_denied"}}
        assert client.get("/metrics").status_code == 401
        for key in ("dev-key", "admin-key"):
            ok = client.get("/metrics", headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200 and "reverb_requests_total" in ok.text
        assert client.get("/v1/models", headers={"Authorization": f"Bearer {plain}"}).status_code == 200


@pytest.mark.parametrize("peer,status", [("127.0.0.1", 200), ("::1", 200), ("10.1.2.3", 401), ("testclient", 401)])
def test_metrics_public_only_to_loopback_clients(app_client, peer, status):
    client, plain = app_client(peer, metrics_public=True)
    with client:
        assert client.get("/metrics").status_code == status
        assert client.get("/v1/models").status_code == 401     # nothing else becomes public


def test_an_event_larger_than_the_requests_whole_budget_is_refused_before_it_is_buffered():
    import asyncio

    from reverb.backends.upstream.client import _sse_data

    async def body(parts):
        for p in parts:
            yield p

    async def read(parts, limit):
        return [d async for d in _sse_data(body(parts), limit)]

    small = [b'data: {"a": 1}\n\n', b": keep-alive\n\n", b'data: {"b": 2}\n\n']
    assert asyncio.run(read(small, 100)) == ['{"a": 1}', '{"b": 2}']
    endless = [b"data: " + b"x" * 1000] * 50          # one event that never ends: refused once past the limit
    with pytest.raises(UpstreamError):
        asyncio.run(read(endless, 10_000))
    assert relay(max_tokens=16).event_limit == (64 << 10) + 16 * (4 << 10)
