"""Anthropic's Messages API through Anthropic's own Python SDK, against `reverb serve` and the tiny model:
create and stream (the same greedy answer), count_tokens (free, logged), a tool round trip with tool_choice
enforced by the grammar, stop_sequences, max_tokens as a ceiling (lowered to fit, the hold too), the out-of-credit
and auth errors in Anthropic's format, models.list; and hostile bodies over raw sockets (400s, never 500s)."""

from __future__ import annotations

import json

import anthropic
import pytest

from reverb.money import MICRO

from .conftest import KEY, SESSION_OWNED, Server
from .test_hostile_e2e import connect
from .upstreams import wait_row

pytestmark = pytest.mark.model
MODEL = "smollm2-135m"
GREEDY = {"temperature": 0}     # Anthropic's SDK no longer names sampling fields; the API (and reverb) reads them
ASK = [{"role": "user", "content": "Write one sentence about the sea."}]
WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                            "required": ["city"]}}
TIME = {"name": "get_time", "description": "The time in a time zone",
        "input_schema": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("messages"), "--parallel", "2", "--deterministic")
    with s.ledger() as ledger:
        s.alice = ledger.create_key("alice", 5 * MICRO)
        s.broke = ledger.create_key("broke", 0)
        s.small = ledger.create_key("small", 1000)    # 1000 micro-units: a prompt and ~2000 tokens, not 64000
    s.start()
    SESSION_OWNED.add(s.proc.pid)
    try:
        yield s
    finally:
        s.stop()
        with s.ledger() as ledger:
            inv = ledger.invariant()
        assert inv["ok"], inv


def client(srv, key: str = KEY, **kw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=srv.base_url, api_key=key, max_retries=0, **kw)


def test_create_and_stream_give_the_same_answer_with_usage(srv):
    c = client(srv)
    whole = c.messages.create(model=MODEL, max_tokens=12, extra_body=GREEDY, system="Be brief.", messages=ASK)
    assert whole.type == "message" and whole.role == "assistant" and whole.id.startswith("msg_")
    assert whole.model == MODEL and whole.content[0].type == "text" and whole.content[0].text
    assert whole.stop_reason in ("end_turn", "max_tokens") and whole.usage.output_tokens <= 12
    assert whole.usage.input_tokens > 0
    with c.messages.stream(model=MODEL, max_tokens=12, extra_body=GREEDY, system="Be brief.", messages=ASK) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == whole.content[0].text == final.content[0].text
    assert final.stop_reason == whole.stop_reason
    assert (final.usage.input_tokens, final.usage.output_tokens) == (whole.usage.input_tokens,
                                                                      whole.usage.output_tokens)


def test_the_stream_sends_anthropics_named_events_in_order(srv):
    with srv.client() as http, http.stream("POST", "/v1/messages?beta=true", headers={
            "anthropic-version": "2023-06-01"}, json={"model": MODEL, "max_tokens": 4, "stream": True,
                                                      "messages": ASK}) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    datas = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]
    assert [d["type"] for d in datas] == names
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    assert datas[-2]["usage"]["output_tokens"] == 4 and datas[-2]["delta"]["stop_reason"] == "max_tokens"


def test_count_tokens_equals_the_prompt_a_request_is_billed_for_and_is_logged_free(srv):
    c = client(srv, srv.alice)
    raw = c.messages.with_raw_response.count_tokens(model=MODEL, system="Be brief.", messages=ASK, tools=[WEATHER])
    counted = raw.parse().input_tokens
    used = c.messages.create(model=MODEL, max_tokens=1, system="Be brief.", messages=ASK, tools=[WEATHER])
    assert counted == used.usage.input_tokens > 0
    row = wait_row(srv, raw.headers["x-request-id"])
    assert row["endpoint"] == "messages.count_tokens" and row["price"] == 0 and row["prompt_tokens"] == counted


def test_a_tool_round_trip_with_tool_choice_enforced(srv):
    """``any`` may answer with several calls (each a tool_use block, each given its tool_result), ``tool`` with that
    one, ``disable_parallel_tool_use`` with exactly one. The ceilings leave room for every call: these prompts pass
    position 256, where --deterministic keeps the configured thread count's kernels, so the greedy answer depends
    on REVERB_THREADS (one thread: two calls, 97 tokens; two threads: one call, 33)."""
    c = client(srv)
    first = c.messages.create(model=MODEL, max_tokens=200, extra_body=GREEDY, tools=[WEATHER, TIME],
                              tool_choice={"type": "any"},
                              messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    assert first.stop_reason == "tool_use", first.content
    calls = [b for b in first.content if b.type == "tool_use"]
    assert calls and len({b.id for b in calls}) == len(calls)
    for call in calls:
        assert call.name in ("get_weather", "get_time") and call.id
        assert set(call.input) == {"city"} if call.name == "get_weather" else set(call.input) == {"zone"}
    forced = c.messages.create(model=MODEL, max_tokens=200, extra_body=GREEDY, tools=[WEATHER, TIME],
                               tool_choice={"type": "tool", "name": "get_time"},
                               messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    forced_call = next(b for b in forced.content if b.type == "tool_use")
    assert forced.stop_reason == "tool_use" and forced_call.name == "get_time"
    assert forced_call.input["zone"] in ("UTC", "CET")
    answer = c.messages.create(model=MODEL, max_tokens=8, extra_body=GREEDY, tools=[WEATHER, TIME], messages=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21 C"}
                                     for call in calls]}],
        tool_choice={"type": "none"})
    assert answer.stop_reason in ("end_turn", "max_tokens") and answer.content[0].type == "text"
    assert answer.content[0].text and not [b for b in answer.content if b.type == "tool_use"]
    # the same round trip streamed, one call only: it arrives as input_json_delta pieces
    with c.messages.stream(model=MODEL, max_tokens=200, extra_body=GREEDY, tools=[WEATHER],
                           tool_choice={"type": "any", "disable_parallel_tool_use": True},
                           messages=[{"role": "user", "content": "What is the weather in Paris?"}]) as s:
        final = s.get_final_message()
    streamed = [b for b in final.content if b.type == "tool_use"]
    assert final.stop_reason == "tool_use" and len(streamed) == 1
    assert streamed[0].name == "get_weather" and set(streamed[0].input) == {"city"}


def test_a_strict_tool_is_enforced_whole_or_refused_naming_the_keyword(srv):
    tool = {**WEATHER, "strict": True, "input_schema": {"type": "object", "properties": {
        "cities": {"type": "array", "maxItems": 500, "items": {"type": "string"}}}}}
    with pytest.raises(anthropic.BadRequestError) as e:
        client(srv).messages.create(model=MODEL, max_tokens=8, tools=[tool], tool_choice={"type": "any"},
                                    messages=ASK)
    assert e.value.body["error"]["type"] == "invalid_request_error" and "maxItems" in e.value.body["error"]["message"]


def test_stop_sequences_end_the_answer_and_say_which(srv):
    c = client(srv)
    free = c.messages.create(model=MODEL, max_tokens=16, extra_body=GREEDY, messages=ASK).content[0].text
    words = free.split()
    assert len(words) >= 3, free
    stop = words[2]
    cut = c.messages.create(model=MODEL, max_tokens=16, extra_body=GREEDY, messages=ASK,
                            stop_sequences=["\u2603never", stop])
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    assert free.startswith(cut.content[0].text) and stop not in cut.content[0].text
    with c.messages.stream(model=MODEL, max_tokens=16, extra_body=GREEDY, messages=ASK, stop_sequences=[stop]) as s:
        final = s.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop


def test_max_tokens_is_a_ceiling_lowered_to_fit_and_held_lowered(srv):
    c = client(srv, srv.small)
    with c.messages.stream(model=MODEL, max_tokens=64000, extra_body=GREEDY,      # Claude Code asks this much
                           messages=[{"role": "user", "content": "Say yes."}]) as stream:
        r = stream.get_final_message()
    assert r.stop_reason in ("end_turn", "max_tokens") and r.usage.input_tokens + r.usage.output_tokens <= 2048
    short = c.messages.create(model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "Count to 50."}])
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3


def test_out_of_credit_is_anthropics_billing_answer(srv):
    with pytest.raises(anthropic.BadRequestError) as e:
        client(srv, srv.broke).messages.create(model=MODEL, max_tokens=8, messages=ASK)
    assert e.value.status_code == 400
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "invalid_request_error"
    assert "credit balance is too low" in e.value.body["error"]["message"]


def test_auth_errors_and_both_key_headers(srv):
    with pytest.raises(anthropic.AuthenticationError) as e:
        client(srv, "sk-wrong").messages.create(model=MODEL, max_tokens=2, messages=ASK)
    assert e.value.body["error"]["type"] == "authentication_error"
    bearer = anthropic.Anthropic(base_url=srv.base_url, auth_token=srv.alice, max_retries=0)
    assert bearer.messages.create(model=MODEL, max_tokens=2, messages=ASK).usage.output_tokens <= 2
    with pytest.raises(anthropic.NotFoundError) as e:
        client(srv).messages.create(model="claude-opus-4-8", max_tokens=2, messages=ASK)
    assert e.value.body["error"]["type"] == "not_found_error"


def test_models_list_in_anthropics_shape_and_openais_without_the_header(srv):
    page = client(srv).models.list()
    assert [m.id for m in page.data] == [MODEL] and page.data[0].type == "model"
    assert client(srv).models.retrieve(MODEL).id == MODEL
    with srv.client() as http:
        assert http.get("/v1/models").json()["object"] == "list"


def raw_messages(srv, body: bytes, path: str = "/v1/messages") -> tuple[int, dict]:
    s = connect(srv)
    try:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: {KEY}\r\nContent-Type: application/json"
                  f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    finally:
        s.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


@pytest.mark.parametrize("body, param", [
    (b'{"model": "smollm2-135m", "max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "image", '
     b'"source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]}', "messages[0].content[0].type"),
    (b'{"model": "smollm2-135m", "max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "document", '
     b'"source": {}}]}]}', "messages[0].content[0].type"),
    (b'{"model": "smollm2-135m", "max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "bogus"}]}]}',
     "messages[0].content[0].type"),
    (b'{"model": "smollm2-135m", "max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "tool_use", '
     b'"id": "x", "name": "f", "input": {}}]}]}', "messages[0].content[0].type"),
    (b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}]}', "max_tokens"),
    (b'{"model": "smollm2-135m", "max_tokens": 4, "messages": [], "n": 2}', "messages"),
    (b'{"model": "smollm2-135m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}], "frobnicate": 1}',
     "frobnicate"),
    (b'{"model": "smollm2-135m", "max_tokens": 4, "tools": [{"type": "web_search_20250305", "name": "web_search"}],'
     b' "messages": [{"role": "user", "content": "hi"}]}', "tools[0].type"),
    (b'{"model": "smollm2-135m", "max_tokens": 4, "messages": [{"role": "user", "content": "\\ud800"}]}', None),
    (b'{"model": "smollm2-135m", "max_tokens": 4, "messages": [{"role": "user", "content": "\xff\xfe"}]}', None),
])
def test_hostile_bodies_are_anthropic_400s(srv, body, param):
    status, answer = raw_messages(srv, body)
    assert status == 400, answer
    assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"
    if param:
        assert f"'{param}'" in answer["error"]["message"], answer


def test_huge_message_lists_and_blocks_are_refused_before_any_work(srv):
    many = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}] * 5000}
    status, answer = raw_messages(srv, json.dumps(many).encode())
    assert status == 400 and answer["error"]["message"] == "'messages' has more than 256 messages"
    blocks = {"model": MODEL, "max_tokens": 4,
              "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}] * 5000}]}
    status, answer = raw_messages(srv, json.dumps(blocks).encode())
    assert status == 400 and "messages[0].content" in answer["error"]["message"]
    status, answer = raw_messages(srv, b'{"model": "smollm2-135m", "messages": [', "/v1/messages/count_tokens")
    assert status == 400 and answer["type"] == "error"
