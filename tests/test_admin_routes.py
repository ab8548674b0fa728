"""Admin routes, /v1/me and rate-limit headers against the ASGI app (the real HTTP layer, service and ledger; the
engine is the fake at its seam). Admin routes refuse every non-admin key; hostile bodies are 400s, never 500s."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from reverb import service as service_mod
from reverb.api.app import create_app
from reverb.api.metrics import Metrics
from reverb.settings import Settings

from .fakes import fake_llama

CFG = Settings.build(environ={}, api_keys=("dev",), parallel=2, max_tokens_cap=64)
ROUTES = [("GET", "/v1/admin/keys"), ("POST", "/v1/admin/keys"), ("GET", "/v1/admin/keys/a"),
          ("PATCH", "/v1/admin/keys/a"), ("POST", "/v1/admin/keys/a"), ("DELETE", "/v1/admin/keys/a"),
          ("GET", "/v1/admin/teams"), ("POST", "/v1/admin/teams"), ("GET", "/v1/admin/teams/t"),
          ("PATCH", "/v1/admin/teams/t"), ("POST", "/v1/admin/topup"), ("POST", "/v1/admin/rotate"),
          ("GET", "/v1/admin/log"), ("GET", "/v1/organization/usage/completions?start_time=0"),
          ("GET", "/v1/organization/costs?start_time=0")]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    d = tmp_path_factory.mktemp("admin")
    svc = service_mod.build(CFG.with_(db=d / "ledger.sqlite3"), backend_factory=fake_llama,
                            hooks=Metrics)
    with TestClient(create_app(svc.settings, service=svc), base_url="http://127.0.0.1",
                    headers={"Authorization": "Bearer dev"}, raise_server_exceptions=False) as c:
        yield c, svc
        assert svc.ledger.invariant()["ok"]


def as_key(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_admin_routes_refuse_every_key_that_is_not_an_admins(app):
    c, svc = app
    plain = svc.ledger.create_key("plain-1", 10)
    admin = svc.ledger.create_key("admin-1", 0, admin=True)
    for method, path in ROUTES:
        r = c.request(method, path, headers=as_key(plain), json={})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "permission_denied"), (method, path)
        assert c.request(method, path, headers=as_key(admin), json={}).status_code != 403, (method, path)
    assert svc.ledger.list_keys()[0]["name"] == "plain-1"   # nothing changed by the refusals


def test_keys_and_teams_over_http(app):
    c, svc = app
    assert c.post("/v1/admin/teams", json={"name": "t2", "rpm": 9, "credit": "3"}).status_code == 201
    made = c.post("/v1/admin/keys", json={"name": "k2", "credit": "1.5", "team": "t2", "tpm": 500, "rpm": 4,
                                          "models": ["smollm2-*"], "budget": "1", "period": "week"})
    assert made.status_code == 201 and made.json()["key"].startswith("rk-"), made.text
    raw = made.json()["key"]
    shown = c.get("/v1/admin/keys/k2").json()
    assert (shown["balance"], shown["budget"], shown["team"], shown["rpm"]) == ("1.5", "1", "t2", 4)
    cleared = c.patch("/v1/admin/keys/k2", json={"rpm": None, "budget": None}).json()
    assert (cleared["rpm"], cleared["budget"]) == (None, None)
    assert c.patch("/v1/admin/teams/t2", json={"tpm": 100}).json()["tpm"] == 100
    assert c.get("/v1/admin/teams/t2").json()["keys"] == ["k2"]
    # /v1/me for the key: its team's limits bind it too, and the response carries the tighter window
    me = c.get("/v1/me", headers=as_key(raw))
    assert me.status_code == 200 and me.json()["team"]["limits"]["requests_per_minute"] == 9
    assert me.headers["x-ratelimit-limit-requests"] == "9" and me.headers["x-ratelimit-limit-tokens"] == "100"
    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    ok = c.post("/v1/chat/completions", headers=as_key(raw), json=body)
    assert ok.status_code == 200 and ok.headers["x-ratelimit-remaining-requests"] == "8", ok.text
    assert int(ok.headers["x-ratelimit-remaining-tokens"]) <= 100 - 3
    big = c.post("/v1/chat/completions", headers=as_key(raw), json={**body, "max_tokens": 64})
    assert big.status_code == 429 and big.json()["error"]["code"] == "rate_limit_exceeded"
    assert big.json()["error"]["type"] == "tokens"
    assert "retry-after" not in big.headers and big.headers["x-should-retry"] == "false"   # can never fit
    assert "max_tokens" in big.json()["error"]["message"]
    assert c.post("/v1/admin/rotate", json={"key": "k2"}).status_code == 200
    assert c.get("/v1/me", headers=as_key(raw)).status_code == 401
    assert c.delete("/v1/admin/keys/k2").json()["revoked"] is True
    assert c.post("/v1/admin/topup", json={"key": "k2", "amount": 1}).status_code == 400
    assert c.post("/v1/admin/keys", json={"name": "k2"}).status_code == 201           # the name is free again
    log = c.get("/v1/admin/log").json()["data"]
    assert log[0]["action"] == "key.create" and log[0]["admin"].startswith("env:")    # the dev key did it


@pytest.mark.parametrize("path, body", [
    ("/v1/admin/keys", {"name": "bad\nname"}),
    ("/v1/admin/keys", {"name": "x", "rpm": "ten"}),
    ("/v1/admin/keys", {"name": "x", "models": "not-a-list-of-strings" * 20}),
    ("/v1/admin/keys", {"name": "x", "budget": {"a": 1}}),
    ("/v1/admin/keys", {"name": "x", "credit": "1e999999999"}),
    ("/v1/admin/keys", {"name": "x", "expires": 5}),
    ("/v1/admin/keys", {"name": "x", "admin": "yes"}),
    ("/v1/admin/keys", {"name": ["x"]}),
    ("/v1/admin/teams", {"name": "x", "tz": "../../etc/passwd"}),
    ("/v1/admin/topup", {"key": "nobody", "amount": 1}),
    ("/v1/admin/topup", {"key": "plain-1", "amount": -1}),
    ("/v1/admin/rotate", {"key": 7}),
])
def test_bad_admin_bodies_are_400s(app, path, body):
    c, _ = app
    r = c.post(path, json=body)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
    assert "Traceback" not in r.text and "/etc" not in r.text.replace("../../etc/passwd", "")


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=12),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                    max_leaves=8)
FIELDS = st.sampled_from(["name", "credit", "rpm", "tpm", "max_parallel", "models", "budget", "period", "tz",
                          "expires", "team", "admin", "key", "amount"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/v1/admin/keys", "/v1/admin/teams", "/v1/admin/topup", "/v1/admin/rotate",
                             "/v1/admin/keys/plain-1", "/v1/admin/teams/t2"]),
       body=st.dictionaries(FIELDS, JSON, max_size=5))
def test_admin_bodies_never_answer_500(app, path, body):
    c, _ = app
    r = c.post(path, json=body)
    assert r.status_code < 500, (path, body, r.text)


@pytest.mark.parametrize("query", ["start_time=x", "start_time=10&end_time=5", "start_time=0&bucket_width=1w",
                                   "start_time=0&group_by=colour", "start_time=0&limit=0", ""])
def test_bad_organization_queries_are_400s(app, query):
    c, _ = app
    for path in ("/v1/organization/usage/completions", "/v1/organization/costs"):
        assert c.get(f"{path}?{query}").status_code == 400, (path, query)


def test_every_route_but_the_web_pages_is_in_the_openapi_document(app):
    """The dialect table and the OpenAPI document name the same paths and methods (the web page's files and data
    routes are its own, not an API)."""
    from jsonschema import Draft202012Validator

    from reverb.api.routes import ROUTES as TABLE
    c, _ = app
    doc = c.get("/openapi.json").json()
    missing = [(r.path, m) for r in TABLE if not r.endpoint.startswith("ui") for m in r.methods
               if m.lower() not in doc["paths"].get(r.path, {})]
    assert not missing, missing
    extra = [p for p in doc["paths"] if p not in {r.path for r in TABLE}]
    assert not extra, extra
    for path in doc["paths"].values():
        for op in path.values():
            for param in op.get("parameters", []):
                Draft202012Validator.check_schema(param["schema"])
