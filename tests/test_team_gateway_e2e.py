"""A gateway a team can share (issue 25), end to end: real servers, the real model.

Admin routes (refused to non-admin keys), keys and teams over HTTP, allowlists on every endpoint, rate-limit headers
and 429s in both dialects, /v1/me, the credit refusal's message, expiry, organization usage and costs; then 20
concurrent requests over two servers on SQLite and on PostgreSQL for each limit.
"""

from __future__ import annotations

import concurrent.futures
import re
import time

import pytest

from reverb.ledger import Ledger
from reverb.models import registry

from .conftest import KEY, ROOT, server_pair, chat, prompt_tokens, reverb, wait_for

SPEC = registry.load(ROOT / "models.toml").resolve("smollm2-135m")
ONE = ("--threads", "1")
ADMIN_ROUTES = [("GET", "/v1/admin/keys", None), ("POST", "/v1/admin/keys", {"name": "x"}),
                ("GET", "/v1/admin/keys/x", None), ("PATCH", "/v1/admin/keys/x", {"rpm": 1}),
                ("DELETE", "/v1/admin/keys/x", None), ("GET", "/v1/admin/teams", None),
                ("POST", "/v1/admin/teams", {"name": "t"}), ("GET", "/v1/admin/teams/t", None),
                ("POST", "/v1/admin/topup", {"key": "x", "amount": 1}), ("POST", "/v1/admin/rotate", {"key": "x"}),
                ("GET", "/v1/admin/log", None),
                ("GET", "/v1/organization/usage/completions?start_time=0", None),
                ("GET", "/v1/organization/costs?start_time=0", None)]


def new_key(target, name: str, *flags: str) -> str:
    out = reverb("keys", "create", name, *flags, "--db", str(target))
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("two_servers", ["sqlite"], indirect=True)
def test_admin_routes_keys_teams_allowlists_headers_and_usage(two_servers, engine):
    # on the SQLite pair's first server (its names are not the limits' tests', and it runs before them: pytest
    # keeps a module fixture's tests together): a server start fewer
    srv = two_servers[0]
    srv.wait_idle()
    plain = new_key(srv.db, "plain", "--credit", "1")   # the CLI once; the others in-process (~0.4 s of CPU each)
    admin = srv.new_key("boss", 0, admin=True)          # `keys create --admin`: test_gateway_cli.py
    with srv.client(plain) as http:
        for method, path, body in ADMIN_ROUTES:
            r = http.request(method, path, json=body)
            assert (r.status_code, r.json()["error"]["code"]) == (403, "permission_denied"), path
        me = http.get("/v1/me").json()
        assert me["name"] == "plain" and me["credit"]["balance"] == "1" and me["allowed_models"] == ["smollm2-135m"]
    with srv.client(admin) as http:
        team = http.post("/v1/admin/teams", json={"name": "eng", "credit": "2", "models": ["smollm2-*"],
                                                 "budget": 1, "period": "month", "tz": "Europe/Paris"})
        assert team.status_code == 201 and team.json()["balance"] == "2", team.text
        made = http.post("/v1/admin/keys", json={"name": "ann", "credit": 1, "rpm": 3, "tpm": 10_000,
                                                 "team": "eng", "models": ["smollm2-135m"]})
        assert made.status_code == 201, made.text
        ann = made.json()["key"]
        assert "key" not in http.get("/v1/admin/keys/ann").json()              # the secret is shown once
        assert http.post("/v1/admin/keys", json={"name": "bad", "rpm": -1}).status_code == 400
        assert http.post("/v1/admin/keys", json={"name": "bad", "colour": 1}).status_code == 400
        shut = http.post("/v1/admin/keys", json={"name": "shut", "credit": 1, "models": []}).json()["key"]
        http.post("/v1/admin/keys", json={"name": "other", "credit": 1, "models": ["qwen*"]}).json()["key"]
        old = http.post("/v1/admin/keys", json={"name": "old", "credit": 1, "expires": "2020-01-01"}).json()["key"]
        assert http.post("/v1/admin/topup", json={"key": "ann", "amount": "0.5"}).json()["balance"] == "1.5"
        assert http.post("/v1/admin/rotate", json={"key": "plain"}).status_code == 200
        assert http.delete("/v1/admin/keys/other").status_code == 200
        assert http.post("/v1/admin/topup", json={"key": "other", "amount": 1}).status_code == 400   # revoked
        log = http.get("/v1/admin/log").json()["data"]
        assert {(e["admin"], e["action"]) for e in log} >= {("boss", "key.create"), ("boss", "team.create"),
                                                           ("boss", "key.topup"), ("boss", "key.rotate"),
                                                           ("boss", "key.revoke")}
    with srv.client(plain) as http:   # rotated: the old secret is gone
        assert http.get("/v1/me").status_code == 401
    with srv.client(old) as http:
        r = http.get("/v1/models")
        assert r.status_code == 401 and "expired" in r.json()["error"]["message"]

    # allowlists: outside it, every endpoint answers as for a model that does not exist
    with srv.client(shut) as http:   # an empty list allows nothing
        assert http.get("/v1/models").json()["data"] == []
        assert http.get("/v1/models/smollm2-135m").status_code == 404
        for path, body in (("/v1/chat/completions", chat("hi", max_tokens=1)),
                           ("/v1/completions", {"model": "smollm2-135m", "prompt": "hi", "max_tokens": 1}),
                           ("/v1/embeddings", {"model": "smollm2-135m", "input": "hi"})):
            r = http.post(path, json=body)
            assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found"), path
            assert r.json()["error"]["message"] == "The model 'smollm2-135m' does not exist"
        r = http.post("/api/endpoint", json={"model": "smollm2-135m", "messages": [{"role": "user",
                                                                                  "content": "hi"}]})
        assert r.status_code == 404 and r.json()["status"] == 0

    # rate-limit headers on every served response, then a 429 with Retry-After in each dialect
    body = chat("Say hi.", max_tokens=2)
    tokens = prompt_tokens(engine, body["messages"]) + 2
    with srv.client(ann) as http:
        for i in range(3):
            r = http.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            assert r.headers["x-ratelimit-limit-requests"] == "3"
            assert r.headers["x-ratelimit-remaining-requests"] == str(2 - i)
            assert r.headers["x-ratelimit-limit-tokens"] == "10000"
            used_before = 10_000 - int(r.headers["x-ratelimit-remaining-tokens"]) - tokens
            assert 0 <= used_before <= i * tokens   # earlier requests settled to what they used
        r = http.post("/v1/chat/completions", json=body)
        assert (r.status_code, r.json()["error"]["code"], r.json()["error"]["type"]) == \
            (429, "rate_limit_exceeded", "requests")
        assert 1 <= int(r.headers["retry-after"]) <= 60 and r.headers["x-ratelimit-remaining-requests"] == "0"
        g = http.post("/api/endpoint", json={"model": "smollm2-135m", "messages": body["messages"]})
        assert (g.status_code, g.json()["status"], g.json()["error"]["code"]) == (429, 0, "rate_limit_exceeded")
        assert int(g.headers["retry-after"]) <= int(r.headers["retry-after"])
        m = http.get("/v1/models")   # every response of a key with a limit carries the headers
        assert (m.headers["x-ratelimit-limit-requests"], m.headers["x-ratelimit-remaining-requests"]) == ("3", "0")
        reset = m.headers["x-ratelimit-reset-requests"]
        assert re.fullmatch(r"\d+(\.\d+)?s|\d+ms|1m0s", reset), reset
        seconds = 60.0 if reset == "1m0s" else float(reset[:-2]) / 1000 if reset.endswith("ms") else float(reset[:-1])
        assert abs(seconds - float(r.headers["retry-after-ms"]) / 1000) < 5   # both: when the oldest request leaves
        me = http.get("/v1/me").json()
        assert me["limits"]["requests_per_minute"] == 3 and me["limits"]["requests_last_minute"] == 3
        assert me["team"]["name"] == "eng" and me["team"]["limits"]["budget"]["time_zone"] == "Europe/Paris"
        # the refusals above were inside the window they report: the window has not moved by now (the server
        # still counts all 3 requests, and refuses again with a wait no longer than the first refusal's)
        last = http.post("/v1/chat/completions", json=body)
        assert (last.status_code, last.json()["error"]["type"]) == (429, "requests")
        assert int(last.headers["retry-after-ms"]) <= int(r.headers["retry-after-ms"])
    # a credit refusal says what the request would hold against what is left, and what would pass
    poor = srv.new_key("poor", 10)   # 0.00001: little: what would pass is a few tokens to generate
    with srv.client(poor) as http:
        r = http.post("/v1/chat/completions", json=chat("Say hi.", max_tokens=1000))
        msg = r.json()["error"]["message"]
        assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota", r.text
        assert "would hold" in msg and "0.00001 left" in msg and "a max_tokens of at most" in msg, msg
        fits = int(msg.rsplit("at most ", 1)[1].split()[0])
        assert 0 < fits < 100, msg
        assert http.post("/v1/chat/completions", json=chat("Say hi.", max_tokens=fits)).status_code == 200
        assert http.post("/v1/chat/completions", json=chat("Say hi.", max_tokens=fits + 1)).status_code in (200, 429)

    # organization usage and costs, for dashboards
    with srv.client(KEY) as http:   # the dev key from --api-key is an admin
        usage = http.get("/v1/organization/usage/completions",
                         params={"start_time": int(time.time()) - 3600, "bucket_width": "1h",
                                 "group_by": ["api_key_id", "model", "project_id"]})
        assert usage.status_code == 200, usage.text
        page = usage.json()
        assert page["object"] == "page" and page["data"][0]["object"] == "bucket"
        results = [x for b in page["data"] for x in b["results"]]
        ann_rows = [x for x in results if x["api_key_id"] == "ann"]
        assert sum(x["num_model_requests"] for x in ann_rows) == 3 and ann_rows[0]["project_id"] == "eng"
        assert ann_rows[0]["model"] == "smollm2-135m" and ann_rows[0]["input_tokens"] > 0
        costs = http.get("/v1/organization/costs", params={"start_time": int(time.time()) // 86400 * 86400,
                                                           "group_by": "line_item"}).json()
        total = sum(x["amount"]["value"] for b in costs["data"] for x in b["results"])
        with Ledger(srv.db, create=False) as ledger:
            assert round(total * 1_000_000) == ledger.invariant()["charges"]
        assert http.get("/v1/organization/costs", params={"start_time": 0, "bucket_width": "1h"}).status_code == 400
    csv_out = reverb("usage", "--group-by", "day,key,model,team", "--format", "csv", "--db", str(srv.db))
    assert csv_out.returncode == 0 and any(line.split(",")[1:4] == ["ann", "smollm2-135m", "eng"]
                                           for line in csv_out.stdout.splitlines()), csv_out.stdout


# -- 20 concurrent requests over two servers on one ledger, for each limit ------------------------------------

@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def two_servers(request, tmp_path_factory):
    """Two servers on one ledger, per ledger engine, shared by the limits' tests (each makes keys of its own);
    the ledger's invariant is checked once both have stopped."""
    yield from server_pair(request, tmp_path_factory, "--parallel", "4", *ONE)


@pytest.mark.parametrize("limit", ["rpm", "tpm", "budget", "max_parallel", "team"])
def test_twenty_concurrent_requests_over_two_servers(two_servers, engine, no_eos, limit):
    a, b, db_target = two_servers
    a.wait_idle()
    b.wait_idle()
    # max_parallel: the admitted streams run until all 20 have their answer's status, then leave (cancelled), so
    # every request arrives while 2 still run and no more tokens are made than that wait takes
    long = limit == "max_parallel"
    body = chat("Count.", max_tokens=1000 if long else 4, logit_bias=no_eos, stream=long)
    tokens = prompt_tokens(engine, body["messages"]) + body["max_tokens"]
    hold = SPEC.cost(tokens - body["max_tokens"], body["max_tokens"])
    settings = {"rpm": {"rpm": 5}, "tpm": {"tpm": 5 * tokens + tokens - 1},
                "budget": {"budget": 5 * hold, "period": "day"},
                "max_parallel": {"max_parallel": 2}, "team": {"team": "crew"}}[limit]
    names = [f"{name}-{limit.replace('_', '-')}" for name in (("racer", "mate") if limit == "team" else ("racer",))]
    # in-process: the CLI's `keys create` is tested above and `teams create` in test_gateway_cli.py
    with Ledger(db_target, create=False) as ledger:
        if limit == "team":   # two keys of one team, each over both servers: the team's 5 requests per minute
            ledger.create_team("crew", rpm=5)
        keys = [ledger.create_key(name, 100_000_000, **settings) for name in names]

    answered: list[int] = []
    # one client (its own pool of connections) per server and key, shared by the threads: 20 clients cost ~0.5 s
    clients = {(s, k): s.client(k, timeout=600) for s in (a, b) for k in keys}

    def call(i):
        http = clients[(a if i % 2 else b), keys[(i // 2) % len(keys)]]
        if not long:
            return http.post("/v1/chat/completions", json=body).status_code
        with http.stream("POST", "/v1/chat/completions", json=body) as r:
            answered.append(r.status_code)
            if r.status_code != 200:
                r.read()
                return r.status_code
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")   # admitted and streaming
            wait_for(lambda: len(answered) == 20, what="all 20 statuses while the admitted still stream")
            return r.status_code   # leaves mid-stream (the connection closes): the server cancels the request

    try:
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            codes = list(pool.map(call, range(20)))
    finally:
        for http in clients.values():
            http.close()
    admitted = 2 if long else 5
    assert sorted(codes) == [200] * admitted + [429] * (20 - admitted), codes
    ran = "cancelled" if long else "completed"

    def usage():
        with Ledger(db_target, create=False) as ledger:
            rows = [u for u in ledger.usage_by(["key"]) if u["key"] in names]
            return {k: sum(u[k] for u in rows) for k in ("completed", "cancelled", "failed", "rejected")}
    counts = wait_for(lambda: sum(usage().values()) == 20 and usage(), what="all 20 requests' rows", interval=0.1)
    assert (counts[ran], counts["rejected"]) == (admitted, 20 - admitted), counts
    with Ledger(db_target, create=False) as ledger:
        assert ledger.invariant()["ok"]
