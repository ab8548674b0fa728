"""Every refusal gets its ledger row and access-log line, named like the served requests of the same route."""

from __future__ import annotations

import httpx

from .conftest import KEY, chat


def row(server, response) -> dict:
    with server.ledger() as ledger:
        return ledger.request(response.headers["x-request-id"])


def test_served_and_refused_requests_share_the_route_name(server):
    with server.client() as http:
        served = http.post("/v1/chat/completions", json=chat("hi", max_tokens=2))
        bad = http.post("/v1/chat/completions", json=chat("hi", temperature=9))
        alias = http.post("/api/v1/chat/completions", json=chat("hi", max_tokens=0))
        gateway_bad = http.post("/api/endpoint", json={"model": "smollm2-135m", "messages": []})
        wrong_method = http.get("/v1/chat/completions")
        unknown = http.get("/no/such/" + "x" * 3000)
    wrong_host = httpx.get(server.base_url + "/v1/models", headers={"Host": "evil.example", "Authorization":
                                                                    f"Bearer {KEY}"}, timeout=300)
    keyless = httpx.post(server.base_url + "/api/endpoint", json={}, timeout=300)
    assert served.status_code == 200 and row(server, served)["endpoint"] == "chat.completions"
    expected = [(bad, 400, "chat.completions"), (alias, 400, "chat.completions"), (gateway_bad, 400, "gateway"),
                (wrong_method, 405, "chat.completions"), (unknown, 404, "unknown"), (wrong_host, 400, "models"),
                (keyless, 401, "gateway")]
    for response, status, endpoint in expected:
        assert response.status_code == status, response.text
        r = row(server, response)
        assert r is not None, (status, endpoint)
        assert r["status"] == "rejected" and r["endpoint"] == endpoint and r["price"] == 0, r
    assert gateway_bad.json()["status"] == 0 and keyless.json()["status"] == 0   # the gateway's own error format
    assert unknown.json()["error"]["code"] == "not_found"
    assert "x" * 100 not in server.log()                                           # raw paths are not logged
