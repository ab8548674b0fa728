"""Refused and unauthenticated traffic cannot fill the ledger or the metrics: refusals without a key are tallied
per client, made-up model names are cut and flagged, and a capped ledger keeps room for paying requests."""

from __future__ import annotations

import httpx

from reverb.ledger.core import DETAIL_ROWS_PER_MINUTE
from reverb.ledger.records import MODEL_CHARS, UNKNOWN_MODEL

from .conftest import chat


FLOOD = 400   # refusals of a 6 KB path: 2.4 MB if each were kept, ~5x the ledger's 0.5 MB cap


def test_keyless_flood_cannot_stop_paying_requests(make_server):
    srv = make_server("--db-max-mb", "0.5")
    with srv.ledger() as ledger:
        key = ledger.create_key("payer", 1_000_000)
    path = "/" + "a" * 6000
    with httpx.Client(base_url=srv.base_url, timeout=120) as anon:
        codes = {anon.get(path).status_code for _ in range(FLOOD)}
    assert codes == {401}
    with srv.client(key, timeout=300) as http:
        r = http.post("/api/endpoint", json={"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}],
                                             "options": {"max_tokens": 2}})
    assert r.status_code == 200, r.text
    with srv.ledger() as ledger:
        assert ledger.request(r.headers["x-request-id"])["status"] == "completed"
        tally = [t for t in ledger.refusals() if t["endpoint"] == "unknown"]
        assert tally == [dict(client="127.0.0.1", endpoint="unknown", error_code="invalid_api_key", n=FLOOD)]
        detail = ledger.engine.read("SELECT COUNT(*) FROM requests WHERE key_name IS NULL")[0][0]
        minutes = ledger.engine.read("SELECT COUNT(DISTINCT minute) FROM refusals")[0][0]
        assert detail <= DETAIL_ROWS_PER_MINUTE * minutes               # rows do not grow with the flood
        assert ledger.usage()[0]["key"] == "-" and ledger.usage()[0]["rejected"] == FLOOD
    assert "a" * 100 not in srv.log()


def test_huge_model_names_do_not_grow_metrics_or_the_ledger(server):
    with server.ledger() as ledger:
        key = ledger.create_key("zero-credit", 0)
    name = "x" * 200_000
    with server.client(key, timeout=300) as http, server.client() as admin:
        http.post("/v1/chat/completions", json=chat("hi", model=name + "warm-up"))
        before = admin.get("/metrics").text
        rids = []
        for i in range(40):
            r = http.post("/v1/chat/completions", json=chat("hi", model=f"{name}{i}\n"))
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
            rids.append(r.headers["x-request-id"])
        after = admin.get("/metrics").text
    assert "x" * 100 not in after
    assert len(after) - len(before) < 2000          # the label sets are the catalogue's, plus "unknown"
    assert 'model="unknown"' in after
    with server.ledger() as ledger:
        rows = [ledger.request(rid) for rid in rids]
    assert all(r["model"].startswith(UNKNOWN_MODEL) and len(r["model"]) <= len(UNKNOWN_MODEL) + MODEL_CHARS + 3
               and "\n" not in r["model"] for r in rows)
