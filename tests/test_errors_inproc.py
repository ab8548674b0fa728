"""Validation, auth and error formats of both dialects, through the real app in-process (the ``app`` fixture: real
routes, validation, service and ledger over the fake engine): no model needed. Moved from test_openai_e2e.py and
test_gateway_e2e.py; test_refusals_e2e.py keeps one refusal of each kind on a real server."""

from __future__ import annotations

import pytest

from .conftest import KEY, chat

MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Tell me a joke."}]


def gw(messages=MESSAGES, **options) -> dict:
    return {"model": "smollm2-135m", "messages": messages, "options": options}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}])
def test_auth_required(app, headers):
    http = app()
    del http.headers["Authorization"]
    r = http.post("/v1/chat/completions", json=chat("Hi", max_tokens=2), headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == "invalid_api_key"
    assert KEY not in r.text and "wrong" not in r.text


@pytest.mark.parametrize("body,status,param,code", [
    (b"{not json", 400, None, "invalid_request"),
    (chat("x", temperature="hot"), 400, "temperature", "invalid_request"),
    (chat("x", max_tokens=-1), 400, "max_tokens", "invalid_request"),
    (chat("x", top_p=1.5), 400, "top_p", "invalid_request"),
    (chat("x", stop=["a", "b", "c", "d", "e"]), 400, "stop", "invalid_request"),
    ({"model": "smollm2-135m", "messages": []}, 400, "messages", "invalid_request"),
    ({"model": "smollm2-135m", "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role",
     "invalid_request"),
    (chat("x", model="no-such-model"), 404, "model", "model_not_found"),
    (chat("x", model="reverb-7b"), 404, "model", "model_not_found"),
])
def test_bad_requests(app, body, status, param, code):
    http = app()
    if isinstance(body, bytes):
        r = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    else:
        r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and err["code"] == code and isinstance(err["code"], str)


def test_nan_is_refused(app):
    r = app().post("/v1/chat/completions", content=b'{"model":"smollm2-135m","temperature":NaN,'
                   b'"messages":[{"role":"user","content":"x"}]}', headers={"content-type": "application/json"})
    assert r.status_code == 400


def test_body_too_large(app):
    r = app().post("/v1/chat/completions", json=chat("x" * (2 << 20)))
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_unknown_path_and_method(app):
    http = app()
    assert http.get("/v1/nothing").status_code == 404
    assert http.get("/v1/chat/completions").status_code == 405


@pytest.mark.parametrize("body,status,code", [
    ({"messages": MESSAGES}, 400, "invalid_request"),
    (gw(max_tokens="ten"), 400, "invalid_request"),
    ({"model": "nope", "messages": MESSAGES}, 404, "model_not_found"),
    ({"model": "smollm2-135m", "messages": MESSAGES, "options": []}, 400, "invalid_request"),
])
def test_errors_in_gateway_format(app, body, status, code):
    r = app().post("/api/endpoint", json=body)
    assert r.status_code == status
    assert r.json()["status"] == 0 and r.json()["error"]["code"] == code and r.json()["error"]["message"]


def test_a_preflight_allows_delete_and_the_sdks_own_headers(app):
    """A browser page at an allowed origin may DELETE a stored response and send the headers the SDKs add (Anthropic's
    x-api-key and anthropic-version, OpenAI's x-stainless-*); a header list that is not plain names is not echoed."""
    http = app(cors_origins=("https://app.example",))
    asked = "X-Api-Key, anthropic-version, x-stainless-os, content-type"
    pre = http.options("/v1/responses/resp_1", headers={"Origin": "https://app.example",
                                                       "Access-Control-Request-Method": "DELETE",
                                                       "Access-Control-Request-Headers": asked})
    assert pre.status_code == 204
    assert "DELETE" in pre.headers["access-control-allow-methods"].split(", ")
    assert pre.headers["access-control-allow-headers"] == asked.lower()
    for hostile in ("x-a\r\nset-cookie: 1", "x-a; y", "x" * 3000):
        pre = http.options("/v1/messages", headers={"Origin": "https://app.example",
                                                    "Access-Control-Request-Method": "POST",
                                                    "Access-Control-Request-Headers": hostile})
        assert pre.headers["access-control-allow-headers"] == "authorization, content-type", hostile
    other = http.options("/v1/messages", headers={"Origin": "https://evil.example",
                                                  "Access-Control-Request-Method": "POST",
                                                  "Access-Control-Request-Headers": asked})
    assert "access-control-allow-headers" not in other.headers
