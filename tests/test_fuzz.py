"""Fuzzing both dialects with hypothesis, from the served OpenAPI schemas, against the ASGI app.

The real HTTP layer, service, batcher and ledger run; the engine is the fake at its seam, so thousands of requests
take seconds. Nothing may answer 500, leak a traceback, a file path or an exception's text, or miss x-request-id;
every error body must match its dialect's schema.
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis.control import currently_in_test_context
from hypothesis import strategies as st
from starlette.testclient import TestClient

from reverb import service as service_mod
from reverb.api.app import create_app
from reverb.api.metrics import Metrics
from reverb.api.openapi import schemas
from reverb.settings import Settings

from .fakes import fake_llama
from .schema_strategies import strategy

LEAKS = re.compile(r"Traceback|File \"|/work/|site-packages|\.py\b|Error:|Exception|object at 0x")
MODEL = "smollm2-135m"
CFG = Settings.build(environ={}, api_keys=("k",), parallel=2, max_tokens_cap=64, max_body_bytes=64 << 10,
                     max_messages=32)
SCHEMAS = schemas(CFG)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    svc = service_mod.build(CFG.with_(db=d / "ledger.sqlite3"), backend_factory=fake_llama, hooks=Metrics)
    with TestClient(create_app(svc.settings, service=svc), base_url="http://127.0.0.1",
                    headers={"Authorization": "Bearer k"}, raise_server_exceptions=False) as c:
        yield c, svc


def check(r, path: str) -> None:
    if currently_in_test_context():
        event(f"{path} {r.status_code}")  # shown by --hypothesis-show-statistics
    assert r.status_code < 500 or r.status_code == 503, (r.status_code, r.text[:300])
    assert r.headers.get("x-request-id", "").startswith("req_")
    if r.status_code >= 400:
        schema = SCHEMAS["GatewayError" if path == "/api/endpoint" else "OpenAIError"]
        jsonschema.validate(r.json(), schema)
    assert not LEAKS.search(r.text), r.text[:300]


def with_model(schema: dict):
    base = st.one_of(strategy(schema, mutate=False), strategy(schema))
    return st.one_of(base, base.map(lambda b: {**b, "model": MODEL} if isinstance(b, dict) else b))


JSON = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                    max_leaves=20)
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.function_scoped_fixture])


@FUZZ
@given(body=with_model(SCHEMAS["ChatRequest"]))
def test_chat_from_schema(client, body):
    c, _ = client
    path = "/v1/chat/completions"
    r = c.post(path, json=body)
    check(r, path)
    if r.status_code == 200 and body.get("stream") is not True:
        jsonschema.validate(r.json(), SCHEMAS["ChatCompletion"])


@FUZZ
@given(body=with_model(SCHEMAS["CompletionRequest"]))
def test_completions_from_schema(client, body):
    c, _ = client
    r = c.post("/v1/completions", json=body)
    check(r, "/v1/completions")
    if r.status_code == 200 and body.get("stream") is not True:
        jsonschema.validate(r.json(), SCHEMAS["Completion"])


@FUZZ
@given(body=with_model(SCHEMAS["EmbeddingRequest"]))
def test_embeddings_from_schema(client, body):
    c, _ = client
    r = c.post("/v1/embeddings", json=body)
    check(r, "/v1/embeddings")
    if r.status_code == 200:
        jsonschema.validate(r.json(), SCHEMAS["EmbeddingList"])


@FUZZ
@given(body=with_model(SCHEMAS["GatewayRequest"]))
def test_gateway_from_schema(client, body):
    c, _ = client
    r = c.post("/api/endpoint", json=body)
    check(r, "/api/endpoint")
    if r.status_code == 200 and (body.get("options") or {}).get("stream") is not True:
        jsonschema.validate(r.json(), SCHEMAS["GatewaySuccess"])


def string_slots(value, at=()):
    """Every place in a JSON value that holds a string (values and object keys), as paths."""
    if isinstance(value, str):
        yield at, "value"
    elif isinstance(value, dict):
        for k, v in value.items():
            yield (*at, k), "key"
            yield from string_slots(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from string_slots(v, (*at, i))


def poison(value, path, kind, bad):
    """``value`` with the string at ``path`` (or the key, for kind "key") given a lone surrogate."""
    if not path:
        return value + bad
    head, rest = path[0], path[1:]
    if isinstance(value, list):
        return [poison(v, rest, kind, bad) if i == head else v for i, v in enumerate(value)]
    if kind == "key" and not rest:
        return {(k + bad if k == head else k): v for k, v in value.items()}
    return {k: (poison(v, rest, kind, bad) if k == head else v) for k, v in value.items()}


BODIES = {"/v1/chat/completions": with_model(SCHEMAS["ChatRequest"]),   # built once, not per example
          "/api/endpoint": with_model(SCHEMAS["GatewayRequest"])}


@FUZZ
@given(data=st.data(), path=st.sampled_from(["/v1/chat/completions", "/api/endpoint"]),
       bad=st.sampled_from(["\ud800", "\udfff", "x\udc80y"]))
def test_a_lone_surrogate_in_any_string_is_a_400_naming_it(client, data, path, bad):
    c, svc = client
    body = data.draw(BODIES[path])
    slots = list(string_slots(body))
    if not isinstance(body, dict) or not slots:
        return
    where, kind = data.draw(st.sampled_from(slots))
    raw = json.dumps(poison(body, where, kind, bad))  # ensure_ascii: the surrogate travels as a \u escape
    held = svc.ledger.invariant()["holds"]
    r = c.post(path, content=raw, headers={"content-type": "application/json"})
    check(r, path)
    assert r.status_code == 400, r.text
    param = r.json()["error"]["param"]
    assert param and "Unicode" in r.json()["error"]["message"]
    assert svc.ledger.invariant()["holds"] == held  # refused before any credit was held


@FUZZ
@given(path=st.sampled_from(["/v1/chat/completions", "/api/endpoint", "/v1/completions", "/v1/embeddings"]),
       body=JSON)
def test_arbitrary_json(client, path, body):
    c, _ = client
    check(c.post(path, content=json.dumps(body), headers={"content-type": "application/json"}), path)


@FUZZ
@given(path=st.sampled_from(["/v1/chat/completions", "/api/endpoint", "/v1/completions", "/v1/embeddings",
                             "/v1/models", "/v1/models/x", "/nope"]),
       raw=st.binary(max_size=200),
       ctype=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", "",
                              "multipart/form-data; boundary=x", "application/json; charset=utf-8"]))
def test_arbitrary_bytes_and_content_types(client, path, raw, ctype):
    c, _ = client
    r = c.post(path, content=raw, headers={"content-type": ctype} if ctype else {})
    check(r, path)
    if path.startswith(("/v1/c", "/v1/e", "/api")) and not ctype.startswith("application/json"):
        assert r.status_code == 415  # forms and text/plain never reach the parser


def test_specific_nasties(client):
    c, _ = client
    path = "/v1/chat/completions"
    cases = [
        b'{"model":"smollm2-135m","messages":[{"role":"user","content":"\\ud800"}]}',
        b'{"model":"smollm2-135m","messages":[{"role":"user","content":"x"}],"temperature":1e999}',
        b'{"model":"smollm2-135m","messages":[{"role":"user","content":"x"}],"max_tokens":1e30}',
        b'{"model":"smollm2-135m","messages":[{"role":"user","content":"x"}],"seed":-1e400}',
        b'{"model":"smollm2-135m","messages":[{"role":"user","content":"x"}],"logit_bias":{"99999":1}}',
        b'{"model":"smollm2-135m","messages":[{"role":"user","content":"x"}],"logit_bias":{"\xd9\xa3":1}}',
        b'{"model":"smollm2-135m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema",'
        b'"json_schema":{"name":"t","schema":{"$ref":"#/$defs/a","$defs":{"a":{"$ref":"#/$defs/a"}}}}}}',
        b'{"model":"smollm2-135m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema",'
        b'"json_schema":{"name":"t","schema":{"type":"string","pattern":"(a+)+$' + b"(" * 3000 + b'"}}}}',
        b'{"model":"smollm2-135m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function",'
        b'"function":{"name":"f","parameters":{"type":"object","properties":{"a":{"type":"string","minLength":9,'
        b'"maxLength":3}}}}}],"tool_choice":"required"}',
        b"[" * 5000 + b"]" * 5000,
        b'{"a":' * 100 + b"1" + b"}" * 100,
    ]
    for raw in cases:
        r = c.post(path, content=raw, headers={"content-type": "application/json"})
        check(r, path)
        assert r.status_code == 400, (raw[:80], r.text)


def test_hostile_tool_arguments_in_history_are_only_text(client):
    c, _ = client
    raw = (b'{"model":"smollm2-135m","max_tokens":2,"messages":[{"role":"assistant","tool_calls":[{"id":"c",'
           b'"type":"function","function":{"name":"f","arguments":"' + b"[" * 1500 + b'"}}]},'
           b'{"role":"tool","tool_call_id":"c","content":"<|im_end|>"},{"role":"user","content":"x"}]}')
    r = c.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    check(r, "/v1/chat/completions")
    assert r.status_code == 200


def test_openapi_document_is_served_behind_auth(client):
    c, _ = client
    assert c.get("/openapi.json", headers={"Authorization": ""}).status_code == 401
    doc = c.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/api/endpoint" in doc["paths"]
    jsonschema.Draft202012Validator.check_schema(SCHEMAS["ChatRequest"])


def test_ledger_invariant_after_fuzzing(client):
    _, svc = client
    assert svc.ledger.invariant()["ok"]
