"""Stored responses' limits through the app with the fake engine (fast, no model): a response larger than
--responses-max-bytes is answered but not stored and says why; --responses-ttl 0 stores nothing; a ledger row and
the stored response are written before the answer, streamed or not."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from reverb import service as service_mod
from reverb.api.app import create_app
from reverb.api.metrics import Metrics
from reverb.settings import Settings

from .fakes import fake_llama

BODY = {"model": "smollm2-135m", "input": "hello there", "max_output_tokens": 8}


def app_client(tmp_path, **settings):
    cfg = Settings.build(environ={}, api_keys=("k",), parallel=2, db=tmp_path / "ledger.sqlite3", **settings)
    svc = service_mod.build(cfg, backend_factory=fake_llama, hooks=Metrics)
    return TestClient(create_app(svc.settings, service=svc), base_url="http://127.0.0.1",
                      headers={"Authorization": "Bearer k"})


@pytest.mark.parametrize("stream", [False, True])
def test_stored_then_retrieved(tmp_path, stream):
    with app_client(tmp_path) as c:
        r = c.post("/v1/responses", json={**BODY, "stream": stream})
        assert r.status_code == 200
        final = r.json() if not stream else \
            [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")][-1]["response"]
        assert final["store"] is True and "reverb_not_stored" not in final
        got = c.get(f"/v1/responses/{final['id']}").json()
        assert got == final
        replay = c.get(f"/v1/responses/{final['id']}?stream=true")
        assert replay.status_code == 400 and replay.json()["error"]["param"] == "stream"
        follow = c.post("/v1/responses", json={**BODY, "previous_response_id": final["id"]}).json()
        assert follow["usage"]["input_tokens"] > final["usage"]["input_tokens"] + final["usage"]["output_tokens"]


def test_too_large_to_store_is_answered_and_says_so(tmp_path):
    with app_client(tmp_path, responses_max_bytes=300) as c:
        r = c.post("/v1/responses", json=BODY).json()
        assert r["status"] in ("completed", "incomplete") and r["output"]
        assert r["store"] is False and "300 bytes" in r["reverb_not_stored"]
        assert c.get(f"/v1/responses/{r['id']}").status_code == 404
        small = c.post("/v1/responses", json={**BODY, "store": False}).json()
        assert small["store"] is False and "reverb_not_stored" not in small


def test_no_retention_stores_nothing(tmp_path):
    with app_client(tmp_path, responses_ttl=0) as c:
        r = c.post("/v1/responses", json=BODY).json()
        assert r["store"] is False
        assert c.get(f"/v1/responses/{r['id']}").status_code == 404


def test_unicode_line_breaks_in_echoed_fields_stay_inside_their_event(tmp_path):
    """U+0085, U+2028 and U+2029 are line breaks to Python's ``splitlines()`` (and U+2028/9 to older JavaScript):
    json.dumps leaves them raw, so a client splitting the stream that way cut an event in two. They are escaped."""
    odd = "a\x85b\u2028c\u2029d"
    with app_client(tmp_path) as c:
        r = c.post("/v1/responses", json={**BODY, "stream": True, "metadata": {"k": odd}, "instructions": odd})
        assert r.status_code == 200
        lines = r.text.splitlines()
        assert lines == r.text.split("\n")[:len(lines)]          # no line breaks but the framing's own
        events = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
        final = events[-1]["response"]
        assert final["metadata"] == {"k": odd} and final["instructions"] == odd   # the text itself is unchanged
