"""Drafts verified on the real model (backends/llama/draft.py): a request's `prediction`, grammar fast-forward and
n-gram speculation give exactly the answer of the same request without them, on the same server kind, token for
token with --deterministic (greedy and seeded); accepted and rejected prediction tokens are reported as OpenAI
reports them, billed (rejected ones as completion tokens) and covered by the credit hold.

Two servers of the module's own: ``plain`` (--deterministic, no fast-forward, no speculation: drafts come only from a
prediction) and ``drafts`` (--deterministic, fast-forward and --speculate ngram); and the session's shared
default-mode server (``shared_server("--parallel", "2")``, which other files use too)."""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import pytest

from reverb.models import registry

from .conftest import SESSION_OWNED, Server, wait_for
from .test_structured_e2e import SCHEMAS, messages as schema_messages, schema_format

pytestmark = pytest.mark.model

MODEL = "smollm2-135m"
SPEC = registry.load(registry.Path(__file__).resolve().parent.parent / "models.toml").resolve(MODEL)
POEM = [{"role": "user", "content": "Write a short poem about the sea, four lines."}]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    flags = {"plain": ("--deterministic", "--no-fast-forward"),
             "drafts": ("--deterministic", "--speculate", "ngram")}
    started: dict[str, Server] = {}
    try:
        for name, args in flags.items():
            srv = started[name] = Server(tmp_path_factory.mktemp(name), "--parallel", "2", *args)
            srv.start()
            SESSION_OWNED.add(srv.proc.pid)
        yield started
    finally:
        for srv in started.values():
            srv.stop()
        for srv in started.values():
            with srv.ledger() as ledger:
                inv = ledger.invariant()
            assert inv["ok"], inv


@pytest.fixture(scope="module")
def plain(servers):
    """``plain(body)``: the plain server's answer to ``body``, asked once per module. --deterministic gives a request
    the same tokens every time, alone or beside others, so tests comparing against the same body share one run."""
    answers: dict[str, dict] = {}

    def answer(body: dict) -> dict:
        key = json.dumps(body, sort_keys=True)
        if key not in answers:
            answers[key] = ok(servers["plain"], body)
        return answers[key]
    return answer


def post(srv: Server, body: dict, key: str | None = None) -> httpx.Response:
    with srv.client(key) if key else srv.client() as http:
        return http.post("/v1/chat/completions", json={"model": MODEL, **body})


def ok(srv: Server, body: dict) -> dict:
    r = post(srv, body)
    assert r.status_code == 200, r.text
    return r.json()


def content(answer: dict) -> str:
    return answer["choices"][0]["message"]["content"]


def drafts(srv: Server, source: str) -> dict:
    """reverb_draft_tokens_total for one source: {"drafted": n, "accepted": n}."""
    with srv.client() as http:
        text = http.get("/metrics").text
    out = {"drafted": 0.0, "accepted": 0.0}
    for line in text.splitlines():
        if line.startswith("reverb_draft_tokens_total{") and f'source="{source}"' in line:
            out["drafted" if 'result="drafted"' in line else "accepted"] = float(line.rsplit(" ", 1)[1])
    return out


def edit(text: str) -> str:
    """The text with one change in its middle (as an edited file differs from its original)."""
    words = text.split(" ")
    mid = len(words) // 2
    return " ".join(words[:mid] + ["ocean-blue"] + words[mid + 1:])


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1.0, "seed": 11},
                                      {"temperature": 0.8, "seed": 5, "frequency_penalty": 0.6, "presence_penalty": 0.3,
                                       "top_k": 40, "logprobs": True, "top_logprobs": 2}],
                         ids=["greedy", "seeded", "penalties-logprobs"])
def test_a_prediction_changes_nothing_but_the_speed(servers, plain, sampling):
    srv = servers["plain"]
    body = {"messages": POEM, "max_tokens": 20, **sampling}
    base = plain(body)
    text = content(base)
    assert len(text) > 40
    before = drafts(srv, "prediction")
    same = ok(srv, {**body, "prediction": {"type": "content", "content": text}})
    assert content(same) == text
    assert same["choices"][0]["logprobs"] == base["choices"][0]["logprobs"]
    details = same["usage"]["completion_tokens_details"]
    assert details["accepted_prediction_tokens"] > base["usage"]["completion_tokens"] // 2
    assert same["usage"]["completion_tokens"] == base["usage"]["completion_tokens"] + details[
        "rejected_prediction_tokens"]
    edited = ok(srv, {**body, "prediction": {"type": "content", "content": [
        {"type": "text", "text": edit(text)[:20]}, {"type": "text", "text": edit(text)[20:]}]}})
    assert content(edited) == text
    d = edited["usage"]["completion_tokens_details"]
    assert d["rejected_prediction_tokens"] > 0 and d["accepted_prediction_tokens"] > 0
    assert edited["usage"]["completion_tokens"] == base["usage"]["completion_tokens"] + d["rejected_prediction_tokens"]
    assert edited["choices"][0]["finish_reason"] == base["choices"][0]["finish_reason"]
    after = drafts(srv, "prediction")
    assert after["accepted"] - before["accepted"] == (details["accepted_prediction_tokens"]
                                                       + d["accepted_prediction_tokens"])


def test_drafts_beside_other_streams_change_no_answer(servers, plain):
    """Deterministic mode's promise under load: a drafting stream and a plain one share decode calls (rows of
    unequal counts per sequence), and each answer is its solo answer."""
    srv = servers["plain"]
    story = {"messages": [{"role": "user", "content": "Tell me a story about a fox."}], "max_tokens": 20,
             "temperature": 0.9, "seed": 21}
    poem = {"messages": POEM, "max_tokens": 20, "temperature": 0}
    solo_story, solo_poem = content(plain(story)), content(plain(poem))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        a = pool.submit(ok, srv, {**poem, "prediction": {"type": "content", "content": edit(solo_poem)}})
        b = pool.submit(ok, srv, story)
        assert content(a.result()) == solo_poem and content(b.result()) == solo_story
    assert a.result()["usage"]["completion_tokens_details"]["accepted_prediction_tokens"] > 0


def test_streamed_with_a_prediction_equals_the_plain_answer(servers, plain):
    srv = servers["plain"]
    body = {"messages": POEM, "max_tokens": 20, "temperature": 0}
    text = content(plain(body))
    pieces, usage = [], None
    with srv.client() as http:
        with http.stream("POST", "/v1/chat/completions", json={
                "model": MODEL, **body, "stream": True, "stream_options": {"include_usage": True},
                "prediction": {"type": "content", "content": edit(text)}}) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                if event["choices"]:
                    pieces.append(event["choices"][0]["delta"].get("content") or "")
                if event.get("usage"):
                    usage = event["usage"]
    assert "".join(pieces) == text
    assert usage["completion_tokens_details"]["accepted_prediction_tokens"] > 0
    assert set(usage["completion_tokens_details"]) == {"accepted_prediction_tokens", "rejected_prediction_tokens"}


def test_the_default_mode_gives_the_same_greedy_answer(shared_server):
    """The default mode's numbers may move with what shares a pass, which a draft changes as load does; at this
    length (all rows before position 256) a lone row and a draft's rows take the same kernel path. Both requests
    start from the same cached prompt (the first one warms the slot)."""
    srv = shared_server("--parallel", "2")
    body = {"messages": POEM, "max_tokens": 20, "temperature": 0}
    ok(srv, body)
    text = content(ok(srv, body))
    got = ok(srv, {**body, "prediction": {"type": "content", "content": edit(text)}})
    assert content(got) == text
    assert got["usage"]["completion_tokens_details"]["accepted_prediction_tokens"] > 0


def test_bad_predictions_are_refused_by_name(servers):
    srv = servers["plain"]
    body = {"messages": POEM, "max_tokens": 4}
    for prediction, param in [({"type": "text", "content": "x"}, "prediction"), ("x", "prediction"),
                              ({"type": "content"}, "prediction.content"),
                              ({"type": "content", "content": 5}, "prediction.content"),
                              ({"type": "content", "content": [{"type": "image_url", "image_url": {}}]},
                               "prediction.content"),
                              ({"type": "content", "content": "x", "extra": 1}, "prediction")]:
        r = post(srv, {**body, "prediction": prediction})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (prediction, r.text)
    r = post(srv, {**body, "n": 2, "prediction": {"type": "content", "content": "x"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    no_details = ok(srv, body)["usage"]
    assert "completion_tokens_details" not in no_details


def test_rejected_prediction_tokens_are_billed_and_held_for(servers, plain):
    srv = servers["plain"]
    body = {"messages": POEM, "max_tokens": 20, "temperature": 0}
    base = plain(body)
    n_prompt = base["usage"]["prompt_tokens"]
    key = srv.new_key("predictor", SPEC.cost(n_prompt, 20))   # exactly the plain hold
    r = post(srv, body, key)
    assert r.status_code == 200, r.text
    prediction = {"type": "content", "content": "A completely different text, " * 4}
    refused = post(srv, {**body, "prediction": prediction}, key)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
    rich = srv.new_key("rich-predictor")
    r = post(srv, {**body, "prediction": {"type": "content", "content": edit(content(base))}}, rich)
    answer = r.json()
    assert content(answer) == content(base)
    rejected = answer["usage"]["completion_tokens_details"]["rejected_prediction_tokens"]
    assert rejected > 0
    with srv.ledger() as ledger:
        row = wait_for(lambda: ledger.request(r.headers["x-request-id"]), what="the ledger row")
    assert row["completion_tokens"] == answer["usage"]["completion_tokens"] == (
        base["usage"]["completion_tokens"] + rejected)
    assert row["price"] == SPEC.cost(row["prompt_tokens"], row["completion_tokens"])


CASES = [(name, {"temperature": 0}) for name in sorted(SCHEMAS)] + [
    ("order", {"temperature": 1.0, "seed": 7}), ("unions", {"temperature": 1.0, "seed": 8})]


@pytest.mark.parametrize("name,run", CASES, ids=[f"{n}-{'seeded' if 'seed' in r else 'greedy'}" for n, r in CASES])
def test_grammar_fast_forward_gives_the_same_answer(servers, plain, name, run):
    body = {"messages": schema_messages(name), "max_tokens": 120, "response_format": schema_format(name), **run}
    before = drafts(servers["drafts"], "forced")
    assert content(ok(servers["drafts"], body)) == content(plain(body))
    after = drafts(servers["drafts"], "forced")
    if SCHEMAS[name].get("required"):   # a required key's spelling is forced (all-optional properties are not)
        assert after["accepted"] > before["accepted"]


def test_fast_forward_with_json_object_and_a_required_tool_call(servers):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"]}}}]
    for body in ({"messages": schema_messages("cat"), "max_tokens": 24, "temperature": 0,
                  "response_format": {"type": "json_object"}},
                 {"messages": [{"role": "user", "content": "Weather in Paris?"}], "max_tokens": 60,
                  "temperature": 0, "tools": tools, "tool_choice": "required", "parallel_tool_calls": False}):
        a, b = (ok(srv, body)["choices"][0]["message"] for srv in (servers["drafts"], servers["plain"]))
        assert a["content"] == b["content"]
        assert [c["function"] for c in a.get("tool_calls", ())] == [c["function"] for c in b.get("tool_calls", ())]


def test_a_prediction_under_a_schema_with_fast_forward(servers, plain):
    """Forced drafts and a prediction's drafts take turns on one stream; the answer is still the plain one."""
    body = {"messages": schema_messages("order"), "max_tokens": 120, "temperature": 0,
            "response_format": schema_format("order")}
    text = content(plain(body))
    got = ok(servers["drafts"], {**body, "prediction": {"type": "content", "content": text.replace("1", "7")}})
    assert content(got) == text
    assert got["usage"]["completion_tokens_details"]["accepted_prediction_tokens"] > 0


def test_ngram_speculation_gives_the_same_answer_when_quoting(servers):
    doc = ("The lighthouse keeper climbed the spiral stairs every evening at dusk. He lit the great lamp and "
           "watched the ships pass through the narrow strait. In winter the storms were fierce and the waves "
           "broke over the rocks below the tower.")
    before = drafts(servers["drafts"], "ngram")
    for sampling in ({"temperature": 0}, {"temperature": 0.7, "seed": 3}):
        body = {"messages": [{"role": "system", "content": "Answer by quoting the document."},
                             {"role": "user", "content": f"Document: {doc}\n\nWhat did the keeper do every "
                                                         "evening? Quote the document."}],
                "max_tokens": 40, **sampling}
        assert content(ok(servers["drafts"], body)) == content(ok(servers["plain"], body))
    assert drafts(servers["drafts"], "ngram")["drafted"] > before["drafted"]


def test_a_prediction_on_the_responses_api(servers):
    """The Responses API takes the same `prediction` (the OpenAI SDK's extra_body): the same answer as without it,
    streamed and not, its accepted and rejected tokens in usage.output_tokens_details and billed alike."""
    import openai
    srv = servers["plain"]
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key=srv.key, max_retries=0)
    ask = {"model": MODEL, "input": POEM[0]["content"], "max_output_tokens": 20, "temperature": 0, "store": False}
    base = client.responses.create(**ask)
    assert base.output_text and base.usage.output_tokens_details.model_extra == {}
    raw = client.responses.with_raw_response.create(**ask, extra_body={"prediction": {
        "type": "content", "content": edit(base.output_text)}})
    got = raw.parse()
    assert got.output_text == base.output_text
    details = got.usage.output_tokens_details.model_extra
    assert details["accepted_prediction_tokens"] > 0 and details["rejected_prediction_tokens"] > 0
    assert got.usage.output_tokens == base.usage.output_tokens + details["rejected_prediction_tokens"]
    with srv.ledger() as ledger:
        row = wait_for(lambda: ledger.request(raw.headers["x-request-id"]), what="the ledger row")
    assert row["completion_tokens"] == got.usage.output_tokens
    events = list(client.responses.create(**ask, stream=True, extra_body={"prediction": {
        "type": "content", "content": base.output_text}}))
    assert events[-1].type == f"response.{base.status}"   # completed, or incomplete at max_output_tokens
    final = events[-1].response
    assert final.output_text == base.output_text
    assert final.usage.output_tokens_details.model_extra["accepted_prediction_tokens"] > 0
    bad = httpx.post(srv.base_url + "/v1/responses", headers={"Authorization": f"Bearer {srv.key}"},
                     json={**ask, "prediction": {"type": "content", "content": 5}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "prediction.content", bad.text
