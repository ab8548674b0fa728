"""The Messages dialect without a model: its rows (wire.py), its blocks into Messages, tools into Tools, the
renderers over fake chunks (thinking blocks included), the Anthropic error format, and the matched stop string."""

from __future__ import annotations

import asyncio
import json

import pytest

from reverb.api import messages, wire
from reverb.api.blocks import relaxed
from reverb.api.errors import anthropic_body
from reverb.backends.llama.textstream import TextStream
from reverb.errors import ContextLengthExceeded, InsufficientCredit, InvalidRequest, OverloadedError
from reverb.settings import Settings
from reverb.types import Chunk, FinishReason, ToolCallDelta, Usage

SETTINGS = Settings()


def parse(**body):
    body.setdefault("model", "m")
    body.setdefault("max_tokens", 16)
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return wire.parse(body, wire.MESSAGES, SETTINGS)


def refused(**body) -> str:
    with pytest.raises(InvalidRequest) as e:
        parse(**body)
    return e.value.param


def test_fields_land_in_the_same_ask_as_chat():
    ask, _ = parse(system=[{"type": "text", "text": "Be brief."}], stop_sequences=["END"], temperature=0.2,
                   top_k=5, top_p=0.9, max_tokens=100_000, thinking={"type": "disabled"}, stream=True,
                   metadata={"user_id": "u"}, context_management={"edits": []}, output_config={"effort": "high"},
                   messages=[{"role": "user", "content": "hi"},
                             {"role": "assistant", "content": [
                                 {"type": "thinking", "thinking": "hm", "signature": "s"},
                                 {"type": "text", "text": "Let me look."},
                                 {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
                             {"role": "user", "content": [
                                 {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text",
                                                                                           "text": "42"}]},
                                 {"type": "text", "text": "and?", "cache_control": {"type": "ephemeral"}}]},
                             {"role": "system", "content": "Mid-way note."}])
    roles = [(m.role, m.content) for m in ask.messages]
    assert roles == [("system", "Be brief."), ("user", "hi"), ("assistant", "Let me look."), ("tool", "42"),
                     ("user", "and?"), ("system", "Mid-way note.")]
    assert ask.messages[2].tool_calls[0].arguments == '{"a": 1}' and ask.messages[3].tool_call_id == "t1"
    s = ask.sampling
    assert (s.stop, s.temperature, s.top_k, s.top_p) == (("END",), 0.2, 5, 0.9)
    assert s.max_tokens == SETTINGS.max_tokens_cap and ask.fit and ask.stream and ask.thinking is False


def test_tools_and_tool_choice_become_the_same_tools_value():
    tool = {"name": "f", "description": "d", "input_schema": {"type": "object", "properties": {
        "xs": {"type": "array", "maxItems": 500, "items": {"type": "string", "format": "uri"}}}}}
    ask, _ = parse(tools=[tool], tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert (ask.tools.choice, ask.tools.parallel) == ("required", False)
    # a non-strict tool's schema keeps what the grammar enforces; the rest is Anthropic's "not guaranteed"
    assert ask.tools.tools[0].parameters == {"type": "object", "properties": {"xs": {"type": "array",
                                                                                     "items": {"type": "string"}}}}
    assert parse(tools=[tool], tool_choice={"type": "tool", "name": "f"})[0].tools.forced == "f"
    assert parse(tools=[tool], tool_choice={"type": "none"})[0].tools.choice == "none"
    strict = parse(tools=[{**tool, "strict": True}])[0].tools.tools[0]    # enforced whole, or 400 at compile
    assert strict.parameters == tool["input_schema"]
    assert refused(tools=[tool], tool_choice={"type": "tool", "name": "g"}) == "tool_choice"
    assert refused(tools=[{"type": "bash_20250124", "name": "bash"}]) == "tools[0].type"
    assert refused(tool_choice={"type": "any"}) == "tool_choice"


@pytest.mark.parametrize("body, param", [
    ({"max_tokens": None}, "max_tokens"), ({"max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "x"}]}]},
     "messages[0].content[0].type"),
    ({"system": [{"type": "image"}]}, "system[0].type"), ({"stop_sequences": [""]}, "stop_sequences"),
    ({"thinking": {"type": "sometimes"}}, "thinking.type"), ({"output_config": {"colour": 1}}, "output_config.colour"),
    ({"container": "c"}, "container"), ({"mcp_servers": []}, "mcp_servers"), ({"n": 2}, "n"),
    ({"service_tier": "priority"}, "service_tier"), ({"temperature": 3}, "temperature"),
])
def test_refusals_name_the_field_on_anthropics_wire(body, param):
    assert refused(**body) == param


def test_a_json_schema_output_format_is_the_grammar_s_response_format():
    ask, _ = parse(output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}})
    assert (ask.response_format.kind, ask.response_format.schema) == ("json_schema", {"type": "object"})
    assert wire.wire_param("response_format.json_schema.schema.x", wire.MESSAGES) == "output_config.format" \
        ".json_schema.schema.x"
    assert wire.wire_param("tools[2].function.parameters.properties", wire.MESSAGES) == \
        "tools[2].input_schema.properties"
    assert wire.wire_param("stop", wire.MESSAGES) == "stop_sequences"


def test_relaxed_is_the_schema_itself_when_it_is_enforceable():
    schema = {"type": "object", "properties": {"a": {"type": "integer", "maximum": 5}}}
    assert relaxed(schema) is schema
    assert relaxed({"type": "object", "properties": {"a": {"not": {}}}}) == {"type": "object",
                                                                           "properties": {"a": {}}}


def answer(chunks, final):
    gen = FakeGeneration(())
    gen.final = final
    return messages.Answer(None, None, None, gen, "msg_1", 0), gen


def test_the_whole_message_has_thinking_text_and_tool_use_blocks():
    chunks = [Chunk(reasoning="Let me think."), Chunk(text="Calling."),
              Chunk(tool_calls=(ToolCallDelta(0, "c1", "f", '{"a":'),)), Chunk(tool_calls=(ToolCallDelta(0, None,
                                                                                                         None, "1}"),))]
    final = Chunk(finish_reason=FinishReason.TOOL_CALLS, usage=Usage(7, 9))
    a, _ = answer(chunks, final)
    m = messages._whole(a, chunks, final, 0)
    assert [b["type"] for b in m["content"]] == ["thinking", "text", "tool_use"]
    assert m["content"][0]["thinking"] == "Let me think." and m["content"][2]["input"] == {"a": 1}
    assert (m["stop_reason"], m["usage"]) == ("tool_use", {"input_tokens": 7, "output_tokens": 9})


class FakeGeneration:
    """What the stream renderer reads of a Generation: its chunks in order, ``final`` once the last arrived."""

    def __init__(self, chunks):
        self.model, self.prompt_tokens, self.final, self.streams = "m", 7, None, 1
        self.rest = iter(chunks)

    async def __anext__(self):
        chunk = next(self.rest)
        if chunk.finish_reason is not None:
            self.final = chunk
        return chunk


def test_the_stream_opens_a_block_per_kind_with_its_deltas(monkeypatch):
    chunks = [Chunk(reasoning="Hm"), Chunk(text="Hi"), Chunk(text=" there"),
              Chunk(finish_reason=FinishReason.STOP, usage=Usage(7, 3), stop="END")]
    gen = FakeGeneration(chunks[1:])
    a = messages.Answer(None, None, None, gen, "msg_1", 0)

    async def settled(g, error):
        return None
    monkeypatch.setattr(messages, "stream_failure", settled)

    async def run():
        return [x async for x in messages._stream(a, chunks[0])]
    frames = asyncio.run(run())
    events = [json.loads(f.split(b"\ndata: ")[1]) for f in frames]
    kinds = [e["type"] for e in events]
    assert kinds == ["message_start", "ping", "content_block_start", "content_block_delta", "content_block_stop",
                     "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"]
    assert events[0]["message"]["usage"] == {"input_tokens": 7, "output_tokens": 0}
    assert events[3]["delta"] == {"type": "thinking_delta", "thinking": "Hm"}
    assert events[5]["content_block"] == {"type": "text", "text": ""} and events[5]["index"] == 1
    assert events[-2]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    assert events[-2]["usage"] == {"input_tokens": 7, "output_tokens": 3}
    assert all(f.startswith(b"event: " + e["type"].encode() + b"\n") for f, e in zip(frames, events, strict=True))


def test_an_upstream_chat_event_reads_as_the_same_pieces():
    event = {"choices": [{"index": 0, "delta": {"reasoning_content": "r", "content": "t", "tool_calls": [
        {"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}]}, "finish_reason": "tool_calls"}]}
    assert messages.pieces(Chunk(passthrough=event)) == ("r", "t", (ToolCallDelta(0, "c", "f", "{}"),), True)


def test_errors_in_anthropics_format():
    status, body, _ = anthropic_body(InsufficientCredit("not enough credit for this request"))
    assert status == 400 and body == {"type": "error", "error": {
        "type": "invalid_request_error", "message": "Your credit balance is too low: not enough credit for this "
                                                    "request"}}
    assert anthropic_body(OverloadedError("busy", retry_after=2))[:2] == (529, {"type": "error", "error": {
        "type": "overloaded_error", "message": "busy"}})
    assert anthropic_body(ContextLengthExceeded("too long"))[1]["error"]["message"] == "prompt is too long: too long"
    assert anthropic_body(RuntimeError("secret"))[:2] == (500, {"type": "error", "error": {
        "type": "api_error", "message": "The server could not complete the request"}})


def test_the_stop_string_that_ended_the_text_is_known():
    ts = TextStream(("STOP", "END"))
    assert ts.feed(b"abc EN") == "abc " and ts.feed(b"D more") == "" and ts.matched == "END" and ts.stopped


def test_a_failure_after_the_first_event_is_one_error_event(monkeypatch):
    chunks = [Chunk(text="Hi"), Chunk(finish_reason=FinishReason.ERROR, usage=Usage(7, 1))]
    gen = FakeGeneration(chunks[1:])

    async def failed(g, error):
        return OverloadedError("The server is shutting down", retry_after=1)
    monkeypatch.setattr(messages, "stream_failure", failed)

    async def run():
        return [x async for x in messages._stream(messages.Answer(None, None, None, gen, "msg_1", 0), chunks[0])]
    frames = asyncio.run(run())
    assert frames[-1] == (b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
                          b'"message":"The server is shutting down"}}\n\n')
    assert not any(f.startswith((b"event: message_delta", b"event: message_stop")) for f in frames)
