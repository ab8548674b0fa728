"""The Responses API without a model: its rows of the field table (input items, flat tools, text.format, the
fields accepted with no effect and the rest refused by name), the output items and stream events built from
chunks (reasoning, text, tool calls; an upstream's chat deltas), the chat body an upstream is sent, and stored
responses in the ledger on both engines (owner-only, expiry). Fast: no model, no reverb server."""

from __future__ import annotations

import json

import jsonschema
import pytest

from reverb.api import wire
from reverb.api.openapi import request_schema
from reverb.api.outputs import Output
from reverb.api.chatbody import request as chat_body
from reverb.errors import InvalidRequest
from reverb.ledger import Ledger
from reverb.ledger import responses as stored
from reverb.request import Account
from reverb.settings import Settings
from reverb.types import Chunk, ResponseFormat, ToolCallDelta

CFG = Settings.build(environ={}, max_tokens_cap=64, max_messages=8)
R = wire.RESPONSES
WEATHER = {"type": "function", "name": "get_weather", "description": "the weather",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def ask(**body):
    return wire.parse({"model": "m", **body}, R, CFG)[0]


def refused(**body) -> str:
    with pytest.raises(InvalidRequest) as e:
        wire.parse({"model": "m", **body}, R, CFG)
    return e.value.param


def test_input_string_and_items_become_the_same_messages_as_chat():
    assert [(m.role, m.content) for m in ask(input="hi").messages] == [("user", "hi")]
    items = [{"role": "developer", "content": "be terse"},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"},
                                                              {"type": "input_text", "text": "b"}]},
             {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "calling"}]},
             {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Rome"}'},
             {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
             {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
             {"type": "reasoning", "id": "rs_1", "summary": []},
             {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "rain"}]}]
    chat = [{"role": "system", "content": "be terse"}, {"role": "user", "content": "ab"},
            {"role": "assistant", "content": "calling", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
                {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "c2", "content": "rain"}]
    assert ask(input=items).messages == wire.parse({"model": "m", "messages": chat}, wire.CHAT, CFG)[0].messages


@pytest.mark.parametrize("value, param", [
    (None, "input"), (5, "input"), ([], "input"), ({"role": "user"}, "input"), ([5], "input[0]"),
    ([{"type": "image", "url": "x"}], "input[0].type"), ([{"type": "item_reference", "id": "x"}], "input[0].type"),
    ([{"role": "tool", "content": "x"}], "input[0].role"), ([{"role": "user", "content": 5}], "input[0].content"),
    ([{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}], "input[0].content[0].type"),
    ([{"role": "user", "content": [{"type": "input_file", "file_id": "x"}]}], "input[0].content[0].type"),
    ([{"role": "user", "content": [{"type": "input_text", "text": 5}]}], "input[0].content[0]"),
    ([{"type": "function_call", "call_id": "", "name": "f", "arguments": "{}"}], "input[0].call_id"),
    ([{"type": "function_call_output", "call_id": "c", "output": 5}], "input[0].output"),
    ([{"type": "reasoning"}], "input"),
    ([{"role": "user", "content": "x"}] * 9, "input"),                     # more items than --max-messages
])
def test_bad_input_is_400_naming_it(value, param):
    assert refused(input=value) == param


def test_huge_input_text_is_refused_before_anything_runs():
    assert refused(input="x" * (CFG.max_message_chars + 1)) == "input"


def test_flat_tools_become_chat_tools_and_hosted_ones_are_left_out():
    a = ask(input="hi", tools=[{"type": "web_search"}, WEATHER, {"type": "namespace", "name": "n", "tools": []}],
            tool_choice={"type": "function", "name": "get_weather"}, parallel_tool_calls=False)
    assert [t.name for t in a.tools.tools] == ["get_weather"] and a.tools.forced == "get_weather"
    assert a.tools.parallel is False
    assert ask(input="hi", tools=[{"type": "web_search"}], tool_choice="auto").tools is None
    assert refused(input="hi", tools=[{"type": "web_search"}], tool_choice="required") == "tool_choice"
    assert refused(input="hi", tools=[{"type": "web_search"}, {"type": "magic"}]) == "tools[1].type"
    assert refused(input="hi", tools=[{"type": "web_search"}, {**WEATHER, "name": "bad name"}]) == "tools[1].name"
    assert refused(input="hi", tools=[WEATHER], tool_choice={"type": "function", "name": "nope"}) == \
        "tool_choice.name"
    assert refused(input="hi", tools=[WEATHER], tool_choice={"type": "web_search"}) == "tool_choice"
    # a name that is not a string is refused (it was a TypeError, a 500, in chat too)
    assert refused(input="hi", tools=[WEATHER], tool_choice={"type": "function", "name": ["x"]}) == \
        "tool_choice.name"
    with pytest.raises(InvalidRequest):
        wire.parse({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                    "tools": [{"type": "function", "function": {"name": "f"}}],
                    "tool_choice": {"type": "function", "function": {"name": {"a": 1}}}}, wire.CHAT, CFG)


def test_text_format_is_response_format():
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    a = ask(input="hi", text={"format": {"type": "json_schema", "name": "yn", "schema": schema, "strict": True}})
    assert a.response_format == ResponseFormat("json_schema", schema, "yn", True)
    assert ask(input="hi", text={"format": {"type": "json_object"}}).response_format.kind == "json_object"
    assert ask(input="hi", text={"format": {"type": "text"}}).response_format is None
    assert refused(input="hi", text={"format": {"type": "json_schema", "name": "a b", "schema": {}}}) == \
        "text.format.name"
    assert refused(input="hi", text={"format": {"type": "xml"}}) == "text.format.type"
    assert refused(input="hi", text={"verbosity": "high"}) == "text.verbosity"
    assert refused(input="hi", text={"colour": 1}) == "text.colour"
    assert refused(input="hi", text="json") == "text"


def test_sampling_lands_in_the_same_ask():
    a = ask(input="hi", max_output_tokens=7, temperature=0, top_p=0.5, stream=True)
    assert (a.sampling.max_tokens, a.sampling.temperature, a.sampling.top_p, a.stream) == (7, 0.0, 0.5, True)
    assert refused(input="hi", max_output_tokens=65) == "max_output_tokens"
    assert refused(input="hi", temperature="hot") == "temperature"


def test_what_codex_sends_is_accepted_and_the_rest_is_refused_by_name():
    with open("tests/data/codex_request.json") as f:
        body = json.load(f)
    reading = wire.read(body, R, Settings.build(environ={}))
    assert reading.error is None, reading.error
    a, _ = reading.for_local()
    assert a.tools is not None and len(a.tools.tools) >= 5 and a.stream
    ok = dict(input="hi", store=False, reasoning={"effort": "low", "summary": "auto"}, include=["x"],
              prompt_cache_key="k", client_metadata={"a": "b"}, truncation="disabled", background=False,
              service_tier="auto", metadata={"a": "b"}, user="u", parallel_tool_calls=True, instructions="be terse")
    ask(**ok)
    for name, value in [("truncation", "auto"), ("background", True), ("service_tier", "flex"),
                        ("top_logprobs", 2), ("prompt", {"id": "p"}), ("conversation", "c"), ("seed", 1),
                        ("messages", [])]:
        assert refused(**{**ok, name: value}) == name


def test_backend_params_are_named_as_the_client_spelled_them():
    assert wire.wire_param("messages", R) == "input"
    assert wire.wire_param("max_tokens", R) == "max_output_tokens"
    assert wire.wire_param("response_format.json_schema.schema.properties.a", R) == "text.format.schema.properties.a"
    assert wire.wire_param("tools[0].function.parameters", R) == "tools[0].parameters"
    assert wire.wire_param("model", R) == "model"


def test_the_openapi_request_schema_accepts_codex_and_nests_text_format():
    schema = request_schema(R, Settings.build(environ={}))
    assert "format" in schema["properties"]["text"]["properties"] and "text.format" not in schema["properties"]
    with open("tests/data/codex_request.json") as f:
        jsonschema.validate(json.load(f), schema)


def _items_and_events(chunks):
    out = Output("x")
    events = [e for c in chunks for e in out.add(c)] + out.close()
    return out, events


def test_reasoning_text_and_calls_become_items_in_order():
    chunks = [Chunk(reasoning="let me think"), Chunk(reasoning=" more"), Chunk(text="Calling"),
              Chunk(tool_calls=(ToolCallDelta(0, "call_a", "get_weather", '{"city":'),)),
              Chunk(tool_calls=(ToolCallDelta(0, arguments=' "Rome"}'),)),
              Chunk(tool_calls=(ToolCallDelta(1, "call_b", "get_time", "{}"),))]
    out, events = _items_and_events(chunks)
    assert [i["type"] for i in out.items] == ["reasoning", "message", "function_call", "function_call"]
    assert out.items[0]["content"] == [{"type": "reasoning_text", "text": "let me think more"}]
    assert out.items[1]["content"][0]["text"] == "Calling"
    assert (out.items[2]["call_id"], out.items[2]["arguments"]) == ("call_a", '{"city": "Rome"}')
    assert all(i["status"] == "completed" for i in out.items)
    kinds = [e["type"] for e in events]
    # each item opens, streams and closes before the next opens
    assert kinds == ["response.output_item.added", "response.reasoning_text.delta", "response.reasoning_text.delta",
                     "response.reasoning_text.done", "response.output_item.done",
                     "response.output_item.added", "response.content_part.added", "response.output_text.delta",
                     "response.output_text.done", "response.content_part.done", "response.output_item.done",
                     "response.output_item.added", "response.function_call_arguments.delta",
                     "response.function_call_arguments.delta", "response.function_call_arguments.done",
                     "response.output_item.done",
                     "response.output_item.added", "response.function_call_arguments.delta",
                     "response.function_call_arguments.done", "response.output_item.done"]
    assert out.closed_call
    assert [(m.role, m.content, [c.id for c in m.tool_calls]) for m in out.messages()] == \
        [("assistant", "Calling", ["call_a", "call_b"])]


def test_an_upstreams_chat_deltas_become_the_same_items():
    def ev(delta):
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    chunks = [Chunk(passthrough=ev({"role": "assistant", "reasoning_content": "hmm"})),
              Chunk(text="Hi", passthrough=ev({"content": "Hi"})),
              Chunk(passthrough=ev({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                    "function": {"name": "f", "arguments": ""}}]})),
              Chunk(passthrough=ev({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]})),
              Chunk(passthrough=ev({"tool_calls": ["junk", {"index": -1}, {"index": True}]}))]
    out, _ = _items_and_events(chunks)
    assert [(i["type"], i.get("call_id"), i.get("arguments")) for i in out.items] == \
        [("reasoning", None, None), ("message", None, None), ("function_call", "call_1", "{}")]


def test_the_upstream_body_is_built_from_the_checked_ask():
    a = ask(input=[{"role": "user", "content": "hi"},
                   {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
                   {"type": "function_call_output", "call_id": "c1", "output": "sunny"}],
            tools=[WEATHER, {"type": "web_search"}], tool_choice="required", parallel_tool_calls=False,
            temperature=0, max_output_tokens=9, text={"format": {"type": "json_object"}}, metadata={"x": "y"})
    body = chat_body(a)
    assert body["messages"] == [{"role": "user", "content": "hi"},
                                {"role": "assistant", "content": None, "tool_calls": [
                                    {"id": "c1", "type": "function",
                                     "function": {"name": "get_weather", "arguments": "{}"}}]},
                                {"role": "tool", "content": "sunny", "tool_call_id": "c1"}]
    assert body["tools"] == [{"type": "function", "function": {"name": "get_weather", "description": "the weather",
                                                                "parameters": WEATHER["parameters"]}}]
    assert (body["tool_choice"], body["parallel_tool_calls"], body["temperature"], body["max_tokens"]) == \
        ("required", False, 0.0, 9)
    assert body["response_format"] == {"type": "json_object"} and "metadata" not in body


@pytest.fixture
def ledger(db_target):
    with Ledger(db_target) as ledger:
        yield ledger


def test_a_stored_response_is_its_owners_only_and_expires(ledger):
    ledger.create_key("alice", 0)
    alice = stored.owner_of(Account("alice", 1))
    dev = stored.owner_of(Account("env:1234abcd", None, unlimited=True))
    assert alice == "key:1" and dev == "env:1234abcd"
    stored.store(ledger, "resp_1", alice, "m", "[]", '{"id": "resp_1"}', 30)
    assert stored.load(ledger, "resp_1", alice) == ("[]", '{"id": "resp_1"}')
    assert stored.load(ledger, "resp_1", dev) is None
    assert not stored.delete(ledger, "resp_1", dev)
    assert stored.load(ledger, "resp_1", alice) is not None
    assert stored.delete(ledger, "resp_1", alice) and stored.load(ledger, "resp_1", alice) is None
    assert not stored.delete(ledger, "resp_1", alice)
    stored.store(ledger, "resp_old", alice, "m", "[]", "{}", -1)      # already expired
    assert stored.load(ledger, "resp_old", alice) is None
    stored.store(ledger, "resp_2", alice, "m", "[]", "{}", 30)        # writing sweeps the expired
    assert ledger.engine.read("SELECT id FROM responses") == [("resp_2",)]
