"""reverb in front of a true OpenAI-compatible engine: a second `reverb serve` of this project (the tiny model) as
the upstream. Greedy answers through the gateway equal the upstream's own, usage and price come from the
upstream's usage, a client that leaves cancels the upstream's job (its own ledger says so), a dead upstream falls
back to a local model, and both kinds are listed with their provider."""

from __future__ import annotations

import time

import openai
import pytest

from reverb.money import MICRO

from .conftest import KEY, SESSION_OWNED, Server, reverb
from .upstreams import KEY_ENV, LOCAL, UP_KEY, cost, dead_url, gateway, remote, stop_and_check, wait_row

pytestmark = pytest.mark.model   # two servers, one the tiny model's upstream

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def engine_up(tmp_path_factory):
    """The upstream: reverb serving the tiny model, accepting the upstream key."""
    srv = Server(tmp_path_factory.mktemp("upstream"), "--parallel", "2", "--api-key", UP_KEY).start()
    SESSION_OWNED.add(srv.proc.pid)  # outlives single tests: not an orphan
    try:
        yield srv
    finally:
        stop_and_check(srv)


@pytest.fixture(scope="module")
def gw(tmp_path_factory, engine_up):
    """The gateway: remote-tiny (the upstream), remote-dead (nothing listens; falls back to the local model) and
    the local tiny model itself."""
    entries = {"remote-tiny": remote(engine_up.base_url + "/v1", "smollm2-135m", ctx=2048, provider="gpu-box"),
               "remote-dead": remote(dead_url(), "smollm2-135m", ctx=2048, fallbacks=["smollm2-135m"]),
               "smollm2-135m": LOCAL}
    srv, key = gateway(Server, tmp_path_factory.mktemp("gw"), entries, "remote-tiny", "--model", "smollm2-135m")
    srv.alice = key
    try:
        yield srv
    finally:
        stop_and_check(srv)


def oa(base_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0)


def test_greedy_answers_equal_the_upstreams_own(gw, engine_up):
    kw = dict(messages=MESSAGES, max_tokens=24, temperature=0)
    direct = oa(engine_up.base_url, UP_KEY).chat.completions.create(model="smollm2-135m", **kw)
    raw = oa(gw.base_url, gw.alice).chat.completions.with_raw_response.create(model="remote-tiny", **kw)
    via = raw.parse()
    assert via.choices[0].message.content == direct.choices[0].message.content != ""
    assert via.choices[0].finish_reason == direct.choices[0].finish_reason and via.model == "remote-tiny"
    assert (via.usage.prompt_tokens, via.usage.completion_tokens) == \
        (direct.usage.prompt_tokens, direct.usage.completion_tokens)
    u = via.usage
    assert int(raw.headers["x-reverb-price"]) == cost(u.prompt_tokens, u.completion_tokens)
    with gw.ledger() as ledger:
        row = ledger.request(raw.headers["x-request-id"])
    assert (row["status"], row["model"], row["price"]) == ("completed", "remote-tiny",
                                                          cost(u.prompt_tokens, u.completion_tokens))
    # streaming, with usage
    chunks = list(oa(gw.base_url, gw.alice).chat.completions.create(
        model="remote-tiny", stream=True, stream_options={"include_usage": True}, **kw))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == direct.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == direct.usage.completion_tokens
    # the gateway dialect
    with gw.client(gw.alice) as c:
        g = c.post("/api/endpoint", json={"model": "remote-tiny", "messages": MESSAGES,
                                          "options": {"max_tokens": 24, "temperature": 0}}).json()
    assert g["result"]["response"] == direct.choices[0].message.content and g["result"]["model"] == "remote-tiny"
    assert (g["result"]["tokens_input"], g["result"]["tokens_output"]) == (u.prompt_tokens, u.completion_tokens)
    assert g["result"]["price"] == cost(u.prompt_tokens, u.completion_tokens) / MICRO


def test_the_upstreams_own_refusal_is_passed_on(gw):
    with gw.client(gw.alice) as c:
        r = c.post("/v1/chat/completions", json={"model": "remote-tiny", "messages": MESSAGES, "temperature": 5})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "temperature" and "between" in err["message"]
    row = wait_row(gw, r.headers["x-request-id"])
    assert row["status"] == "failed" and row["price"] == 0


def test_a_client_that_leaves_cancels_the_upstream_job(gw, engine_up, no_eos):
    body = {"model": "remote-tiny", "messages": [{"role": "user", "content": "Tell a very long story."}],
            "max_tokens": 1500, "logit_bias": no_eos, "stream": True}
    with gw.client(gw.alice) as c, c.stream("POST", "/v1/chat/completions", json=body) as s:
        rid = s.headers["x-request-id"]
        for line in s.iter_lines():
            if '"content":"' in line.replace(" ", "") and '"content":""' not in line.replace(" ", ""):
                break  # generated text is flowing
    deadline = time.monotonic() + 120
    while True:
        with engine_up.ledger() as ledger:
            cancelled = sum(r["cancelled"] for r in ledger.usage())
        with gw.ledger() as ledger:
            row = ledger.request(rid)
        if (cancelled and row) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert cancelled == 1, "the upstream never saw the client leave"
    assert row["status"] == "cancelled" and 0 < row["completion_tokens"] < 1500


def test_a_dead_upstream_falls_back_to_the_local_model(gw):
    kw = dict(messages=MESSAGES, max_tokens=12, temperature=0)
    local = oa(gw.base_url, gw.alice).chat.completions.create(model="smollm2-135m", **kw)
    via = oa(gw.base_url, gw.alice).chat.completions.create(model="remote-dead", **kw)
    assert via.model == "smollm2-135m" and via.choices[0].message.content == local.choices[0].message.content
    # A request only an upstream can serve (tools) is never handed to the local model, which would drop them.
    with gw.client(gw.alice) as c:
        r = c.post("/v1/chat/completions", json={**kw, "model": "remote-dead", "tools": [
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unavailable"


def test_both_kinds_are_listed_with_their_provider(gw):
    models = {m.id: m for m in oa(gw.base_url, KEY).models.list().data}
    assert set(models) == {"remote-tiny", "remote-dead", "smollm2-135m"}
    assert models["remote-tiny"].owned_by == "gpu-box" and models["remote-dead"].owned_by == "127.0.0.1"
    assert models["smollm2-135m"].owned_by == "reverb" and models["smollm2-135m"].provider == "llama.cpp"
    models_toml = next(a for a in gw.args if a.endswith(".toml"))
    out = reverb("models", "--models", models_toml, env={KEY_ENV: UP_KEY})
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("remote-tiny"))
    assert "gpu-box" in line and "upstream" in line and "$" + KEY_ENV in line and UP_KEY not in out.stdout
    assert "llama.cpp" in next(ln for ln in out.stdout.splitlines() if ln.startswith("smollm2-135m"))
    assert gw.stats("remote-tiny")["slots"] == 0 and gw.stats("remote-tiny")["ctx"] == 2048
