"""Messages for a model behind an OpenAI-compatible upstream: reverb checks the request as for a local model,
sends the upstream the same request as a chat completion (system, tool calls and results, tools and tool_choice,
stop sequences, the lowered max_tokens), and renders the upstream's chat events as Anthropic's message and
stream, billed on the upstream's usage. Through Anthropic's SDK, against the loopback upstream of
tests/misbehaving_upstream.py."""

from __future__ import annotations

import anthropic
import pytest

from .upstreams import cost, gateway, remote, upstream, wait_row  # noqa: F401 (upstream: a fixture)

pytestmark = pytest.mark.model
WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture
def gw(make_server, tmp_path, upstream):  # noqa: F811
    url = upstream.url
    srv, key = gateway(make_server, tmp_path, {"up-echo": remote(url, "echo"), "up-tools": remote(url, "tools")},
                       "up-echo")
    return srv, anthropic.Anthropic(base_url=srv.base_url, api_key=key, max_retries=0)


def test_a_message_goes_upstream_as_a_chat_completion_and_comes_back_as_a_message(gw, upstream):  # noqa: F811
    srv, client = gw
    raw = client.messages.with_raw_response.create(
        model="up-echo", max_tokens=20000, system="Be brief.", stop_sequences=["zz"],
        messages=[{"role": "user", "content": [{"type": "text", "text": "alpha beta gamma"}]}])
    r = raw.parse()
    assert r.content[0].type == "text" and r.content[0].text == "alpha beta gamma"
    assert r.stop_reason == "end_turn" and r.model == "up-echo"
    assert (r.usage.input_tokens, r.usage.output_tokens) == (3 + 2 + 7, 3)     # the upstream's own usage
    sent = upstream.last()["body"]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "alpha beta gamma"}]
    assert sent["stop"] == ["zz"] and sent["stream"] is True and sent["model"] == "echo"
    assert sent["max_tokens"] < 4096               # Claude Code's ceiling, lowered to fit the entry's context
    row = wait_row(srv, raw.headers["x-request-id"])
    assert row["endpoint"] == "messages" and row["price"] == cost(12, 3)
    short = client.messages.create(model="up-echo", max_tokens=2,
                                   messages=[{"role": "user", "content": "one two three four"}])
    assert short.stop_reason == "max_tokens" and short.content[0].text == "one two"


def test_tools_and_a_tool_result_are_translated_both_ways(gw, upstream):  # noqa: F811
    _, client = gw
    first = client.messages.create(model="up-tools", max_tokens=64, tools=[WEATHER], tool_choice={"type": "any"},
                                   messages=[{"role": "user", "content": "Weather in Paris?"}])
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert (call.id, call.name, call.input) == ("call_1", "get_weather", {"city": "Paris"})
    sent = upstream.last()["body"]
    assert sent["tools"] == [{"type": "function", "function": {"name": "get_weather",
                                                               "description": "The weather in a city",
                                                               "parameters": WEATHER["input_schema"]}}]
    assert sent["tool_choice"] == "required"
    with client.messages.stream(model="up-tools", max_tokens=64, tools=[WEATHER],
                                tool_choice={"type": "tool", "name": "get_weather"},
                                messages=[{"role": "user", "content": "Weather in Paris?"}]) as s:
        streamed = s.get_final_message()
    assert streamed.stop_reason == "tool_use" and streamed.content[-1].input == {"city": "Paris"}
    assert upstream.last()["body"]["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    answer = client.messages.create(model="up-echo", max_tokens=64, tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "sunny and warm"}]}])
    assert answer.content[0].text == "sunny and warm"
    sent = upstream.last()["body"]["messages"]
    assert sent[1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
    assert sent[2] == {"role": "tool", "content": "sunny and warm", "tool_call_id": "call_1"}


def test_an_upstream_refusal_is_an_anthropic_error(gw):
    _, client = gw
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model="up-echo", max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}])
    assert e.value.body["error"]["type"] == "invalid_request_error"
