"""Operators' features end to end: /metrics, JSON access logs, the ready file, graceful shutdown."""

from __future__ import annotations

import json
import re
import signal
import threading

import httpx

from .conftest import KEY, chat


def test_metrics_behind_auth_and_counting(server):
    assert httpx.get(server.base_url + "/metrics").status_code == 401
    with server.client() as http:
        before = _value(http.get("/metrics").text, 'reverb_tokens_total{kind="completion",model="smollm2-135m"}')
        r = http.post("/v1/chat/completions", json=chat("Say hi.", max_tokens=6, stream=True))
        assert r.status_code == 200
        text = http.get("/metrics").text
    after = _value(text, 'reverb_tokens_total{kind="completion",model="smollm2-135m"}')
    assert after - before >= 1
    for name in ("reverb_requests_total", "reverb_time_to_first_token_seconds_bucket",
                 "reverb_inter_token_latency_seconds_bucket", "reverb_queue_depth", "reverb_active_slots",
                 "reverb_credit_charged_total"):
        assert name in text, name
    assert re.search(r'reverb_requests_total\{model="smollm2-135m",route="chat.completions",status="200"\}',
                     text)


def _value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_public_flag(make_server):
    srv = make_server("--metrics-public")
    assert httpx.get(srv.base_url + "/metrics").status_code == 200
    assert httpx.get(srv.base_url + "/v1/models").status_code == 401


def test_json_access_log_one_line_per_request(make_server):
    srv = make_server("--log-format", "json")
    with srv.client() as http:
        ok = http.post("/api/endpoint", json={"model": "smollm2-135m", "options": {"max_tokens": 4},
                                              "messages": [{"role": "user", "content": "hi"}]})
        bad = http.post("/v1/chat/completions", json=chat("x", model="nope"))
    denied = httpx.post(srv.base_url + "/v1/chat/completions", json=chat("x"),
                        headers={"Authorization": "Bearer not-a-key"})
    srv.stop()
    lines = [json.loads(ln) for ln in srv.log().splitlines() if ln.startswith("{")]
    by_id = {ln["request_id"]: ln for ln in lines}
    a = by_id[ok.headers["x-request-id"]]
    assert a["status"] == 200 and a["model"] == "smollm2-135m" and a["outcome"] == "completed"
    assert a["prompt_tokens"] > 0 and a["completion_tokens"] > 0 and a["price"] >= 0 and a["latency_ms"] > 0
    assert a["key"].startswith("env:")
    b = by_id[bad.headers["x-request-id"]]
    assert b["status"] == 404 and b["error_code"] == "model_not_found"
    c = by_id[denied.headers["x-request-id"]]
    assert c["status"] == 401 and c["key"] is None
    log = srv.log()
    assert KEY not in log and "not-a-key" not in log


def test_sigterm_drains_running_streams(make_server, no_eos):
    srv = make_server("--drain-timeout", "3600")  # a busy machine may take minutes for 300 tokens
    got: dict = {"lines": []}
    streaming = threading.Event()

    def stream():
        with srv.client() as http:
            with http.stream("POST", "/v1/chat/completions",
                             json=chat("Write a long essay.", max_tokens=80, stream=True, logit_bias=no_eos)) as r:
                for ln in r.iter_lines():
                    if ln:
                        got["lines"].append(ln)
                        streaming.set()

    t = threading.Thread(target=stream)
    t.start()
    assert streaming.wait(120)  # the stream is running
    srv.proc.send_signal(signal.SIGTERM)
    t.join(600)
    assert srv.proc.wait(600) == 0
    assert got["lines"][-1] == "data: [DONE]"  # finished, not cut: a graceful drain
    with srv.ledger() as ledger:
        inv = ledger.invariant()
    assert inv["ok"] and inv["holds"] == 0
    assert not (srv.workdir / "ready").exists()
