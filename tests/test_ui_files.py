"""The web page's files and its own data routes against the ASGI app (the real HTTP layer, service and ledger; the
engine is the fake at its seam): public files with a strict CSP, data only with a key, admin data only for admin
keys, a request's price only for the key that made it, --no-ui, and the page's size and offline rules."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
from starlette.testclient import TestClient

from reverb import service as service_mod
from reverb.api import ui
from reverb.api.app import create_app
from reverb.money import MICRO, format_money
from reverb.api.metrics import Metrics
from reverb.settings import Settings

from .fakes import fake_llama

CFG = Settings.build(environ={}, api_keys=("dev",), parallel=2, max_tokens_cap=64)
STATIC = ui.STATIC


def client(tmp_path, **changes):
    svc = service_mod.build(CFG.with_(db=tmp_path / "ledger.sqlite3", **changes), backend_factory=fake_llama,
                            hooks=Metrics)
    return TestClient(create_app(svc.settings, service=svc), base_url="http://127.0.0.1",
                      raise_server_exceptions=False), svc


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    c, svc = client(tmp_path_factory.mktemp("ui"))
    with c:
        yield c, svc
        assert svc.ledger.invariant()["ok"]


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_page_files_are_public_with_a_strict_policy(app):
    c, _ = app
    page = c.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    for rule in ("default-src 'self'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'",
                 "object-src 'none'", "base-uri 'none'", "require-trusted-types-for 'script'"):
        assert rule in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "set-cookie" not in page.headers
    assert "access-control-allow-origin" not in page.headers     # CORS stays off by default
    for name in ui.files():
        r = c.get(f"/ui/{name}")
        assert r.status_code == 200 and r.headers["content-security-policy"] == csp, name
        assert c.get(f"/ui/{name}", headers={"if-none-match": r.headers["etag"]}).status_code == 304
    assert c.get("/ui/app.js").headers["content-type"].startswith("text/javascript")
    assert c.get("/", follow_redirects=False).headers["location"] == "/ui"


@pytest.mark.parametrize("path", ["/ui/nope.js", "/ui/..%2fapi%2fui.py", "/ui/%2e%2e/settings.py",
                                  "/ui/../../runtime/settings.py", "/ui/static", "/ui/index.html%00.js"])
def test_only_the_page_files_are_served(app, path):
    c, _ = app
    r = c.get(path)   # a path that leaves the directory is no page path at all: it needs a key like any other
    assert r.status_code in (401, 404) and r.json()["error"]["code"] in ("not_found", "invalid_api_key"), path
    assert "import" not in r.text
    assert c.get(path, headers=bearer("dev")).status_code == 404, path


def test_page_data_needs_a_key_and_admin_data_an_admin_key(app):
    c, svc = app
    plain = svc.ledger.create_key("plain-ui", 10 * MICRO)
    admin = svc.ledger.create_key("admin-ui", 0, admin=True)
    today = datetime.now(timezone.utc).date().isoformat()
    data = [f"/ui/api/usage?since={today}&until={today}", "/ui/api/last-use", "/ui/api/refusals"]
    for path in data + ["/ui/api/requests/req_x"]:
        assert c.get(path).status_code == 401, path
    for path in data:
        r = c.get(path, headers=bearer(plain))
        assert (r.status_code, r.json()["error"]["code"]) == (403, "permission_denied"), path
        assert c.get(path, headers=bearer(admin)).status_code == 200, path
        assert c.get(path, headers=bearer("dev")).status_code == 200, path


def test_a_request_price_is_shown_only_to_its_key(app):
    c, svc = app
    mine = svc.ledger.create_key("mine-ui", 10 * MICRO)
    other = svc.ledger.create_key("other-ui", 10 * MICRO)
    r = c.post("/v1/chat/completions", headers=bearer(mine), json={
        "model": "smollm2-135m", "max_tokens": 4, "messages": [{"role": "user", "content": "a b c"}]})
    assert r.status_code == 200, r.text
    rid, price = r.headers["x-request-id"], int(r.headers["x-reverb-price"])
    got = c.get(f"/ui/api/requests/{rid}", headers=bearer(mine)).json()
    assert (got["pending"], got["price"], got["price_micro"], got["status"]) == (False, format_money(price), price,
                                                                                 "completed")
    assert got["completion_tokens"] == r.json()["usage"]["completion_tokens"]
    for key in (other, "dev"):   # another key, even the operator's, sees nothing of it
        assert c.get(f"/ui/api/requests/{rid}", headers=bearer(key)).json() == {
            "request_id": rid, "pending": True, "price": None}
    assert c.get("/ui/api/requests/" + "x" * 65, headers=bearer(mine)).status_code == 400
    dev = c.post("/v1/chat/completions", headers=bearer("dev"), json={
        "model": "smollm2-135m", "max_tokens": 2, "messages": [{"role": "user", "content": "a"}]})
    own = c.get(f"/ui/api/requests/{dev.headers['x-request-id']}", headers=bearer("dev")).json()
    assert (own["pending"], own["price_micro"]) == (False, int(dev.headers["x-reverb-price"]))   # a dev key's own


def test_usage_rows_are_reverb_usage_rows(app):
    c, svc = app
    key = svc.ledger.create_key("usage-ui", 10 * MICRO)
    for _ in range(2):
        r = c.post("/v1/chat/completions", headers=bearer(key), json={
            "model": "smollm2-135m", "max_tokens": 3, "messages": [{"role": "user", "content": "x y"}]})
        assert r.status_code == 200, r.text
    c.post("/v1/chat/completions", headers=bearer(key),
           json={"model": "<b>no</b>", "messages": [{"role": "user", "content": "x"}]})
    today = datetime.now(timezone.utc).date()
    got = c.get(f"/ui/api/usage?since={today}&until={today}", headers=bearer("dev")).json()
    start = datetime(today.year, today.month, today.day, tzinfo=timezone.utc)
    iso = lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # noqa: E731
    want = svc.ledger.usage_by(["day", "key", "model", "team"], iso(start), iso(start + timedelta(days=1)))
    assert [{k: v for k, v in r.items() if k != "price_micro"} for r in got["data"]] == [
        {**r, "price": format_money(r["price"])} for r in want]
    mine = [r for r in got["data"] if r["key"] == "usage-ui"]
    assert (sum(r["completed"] for r in mine), sum(r["rejected"] for r in mine)) == (2, 1), mine
    yesterday = today - timedelta(days=1)
    assert c.get(f"/ui/api/usage?since={yesterday}&until={yesterday}", headers=bearer("dev")).json()["data"] == []
    for query in ("since=2026-1-1&until=2026-01-02", f"since={today}&until={yesterday}", "since=x&until=y",
                  "since=2020-01-01&until=2026-01-01", ""):
        r = c.get(f"/ui/api/usage?{query}", headers=bearer("dev"))
        assert r.status_code == 400 and r.json()["error"]["param"] in ("since", "until"), query


def test_refusals_by_code_and_last_use(app):
    c, svc = app
    key = svc.ledger.create_key("refused-ui", 10 * MICRO)
    c.post("/v1/chat/completions", headers=bearer(key),
           json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    c.get("/v1/models", headers=bearer("wrong-key"))
    rows = {r["code"]: r for r in c.get("/ui/api/refusals?hours=1", headers=bearer("dev")).json()["data"]}
    assert rows["model_not_found"]["with_key"] >= 1
    assert rows["invalid_api_key"]["without_key"] >= 1
    for bad in ("0", "745", "x", "-1"):
        assert c.get(f"/ui/api/refusals?hours={bad}", headers=bearer("dev")).status_code == 400
    uses = {(u["name"], u["revoked"]): u["last_used"] for u in
            c.get("/ui/api/last-use", headers=bearer("dev")).json()["data"]}
    assert uses[("refused-ui", False)].startswith(datetime.now(timezone.utc).date().isoformat())
    svc.ledger.revoke("refused-ui")
    svc.ledger.create_key("refused-ui", MICRO)      # the name is free again; the old key's use stays its own
    uses = {(u["name"], u["revoked"]) for u in c.get("/ui/api/last-use", headers=bearer("dev")).json()["data"]}
    assert ("refused-ui", True) in uses and ("refused-ui", False) not in uses


def test_no_ui_serves_no_page(tmp_path):
    c, _ = client(tmp_path, ui=False)
    with c:
        for path in ("/ui", "/ui/app.js", "/"):
            assert c.get(path, follow_redirects=False).status_code in (401, 404), path
        assert c.get("/ui/api/last-use", headers=bearer("dev")).status_code == 404
        assert c.get("/v1/models", headers=bearer("dev")).status_code == 200


def test_the_page_is_small_offline_and_builds_no_html_from_strings():
    files = sorted(p for p in STATIC.iterdir() if p.is_file())
    assert sum(p.stat().st_size for p in files) < 200_000
    for p in files:
        text = p.read_text()
        # nothing fetched from elsewhere: no absolute URLs in markup or styles, no font files, imports are relative
        if p.suffix in (".html", ".css"):
            assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text), p.name
            assert "url(" not in text and "@import" not in text and "@font-face" not in text, p.name
        if p.suffix == ".js":
            for spec in re.findall(r"^import .* from \"([^\"]+)\";", text, re.M):
                assert spec.startswith("./"), (p.name, spec)
            for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function(",
                         "localStorage.setItem(\"reverb.key", "document.cookie"):
                assert sink not in text, (p.name, sink)
    assert "sessionStorage" in (STATIC / "api.js").read_text()


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_the_page_reads_on_both_ledger_engines(engine, tmp_path, request):
    from reverb.ledger import Ledger, RequestRecord, lookups
    target = request.getfixturevalue("pg_url") if engine == "postgresql" else tmp_path / "ledger.sqlite3"
    with Ledger(target) as ledger:
        a, b = ledger.authenticate(ledger.create_key("a", MICRO)), ledger.authenticate(ledger.create_key("b", MICRO))
        ledger.log_rejected(a, RequestRecord("req_1", "chat.completions", "m", "rejected",
                                             error_code="model_not_found"))
        ledger.log_rejected(None, RequestRecord("req_2", "models", None, "rejected", error_code="invalid_api_key"),
                            client="10.0.0.1")
        rows = {r["code"]: r for r in lookups.refusals_by_code(ledger, "2000-01-01T00:00:00.000000Z")}
        assert (rows["model_not_found"]["with_key"], rows["model_not_found"]["without_key"]) == (1, 0)
        assert (rows["invalid_api_key"]["with_key"], rows["invalid_api_key"]["without_key"]) == (0, 1)
        assert lookups.refusals_by_code(ledger, "2999-01-01T00:00:00.000000Z") == []
        assert lookups.request_of(ledger, "req_1", a.key_id, a.name)["error_code"] == "model_not_found"
        assert lookups.request_of(ledger, "req_1", b.key_id, b.name) is None
        assert lookups.request_of(ledger, "req_2", None, "") is None      # a keyless row is nobody's
        assert [(u["name"], u["revoked"]) for u in lookups.last_use(ledger)] == [("a", False)]
        ledger.revoke("a")
        assert [(u["name"], u["revoked"]) for u in lookups.last_use(ledger)] == [("a", True)]
