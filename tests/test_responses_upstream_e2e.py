"""The Responses API for a model behind an OpenAI-compatible upstream: the request reaches the upstream as a
chat-completions body built from what reverb checked, and the upstream's chat events come back as Responses
output (text, a function call), billed on the upstream's usage; an upstream error before the first event is the
HTTP error chat would give, one after it is ``response.failed`` with its code. The upstream is the loopback
misbehaving upstream (tests/misbehaving_upstream.py)."""

from __future__ import annotations

import json

import openai
import pytest

from .upstreams import UP_KEY, cost, gateway, remote, upstream, wait_row  # noqa: F401 - upstream is a fixture

pytestmark = pytest.mark.model    # starts a server

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


@pytest.fixture
def gw(make_server, tmp_path, upstream):  # noqa: F811
    base = upstream.url
    entries = {name: remote(base, name) for name in ("echo", "tools", "error-event", "status-429")}
    srv, key = gateway(make_server, tmp_path, entries, "echo")
    srv.alice = key
    return srv


def oa(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.base_url + "/v1", api_key=srv.alice, max_retries=0)


def test_text_through_an_upstream_is_a_response_billed_on_its_usage(gw, upstream):  # noqa: F811
    raw = oa(gw).responses.with_raw_response.create(
        model="echo", instructions="Be terse.", input=[{"role": "user", "content": "one two three"}],
        max_output_tokens=10, temperature=0.5, metadata={"mine": "only"})
    r = raw.parse()
    assert r.output_text == "one two three" and r.status == "completed" and r.model == "echo"
    sent = upstream.last()["body"]
    assert sent["messages"] == [{"role": "system", "content": "Be terse."},
                                {"role": "user", "content": "one two three"}]
    assert (sent["max_tokens"], sent["temperature"], sent["stream"]) == (10, 0.5, True)
    assert "metadata" not in sent and "input" not in sent and "instructions" not in sent
    assert upstream.last()["headers"]["authorization"] == f"Bearer {UP_KEY}"
    row = wait_row(gw, raw.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (r.usage.input_tokens, r.usage.output_tokens)
    assert row["price"] == cost(r.usage.input_tokens, r.usage.output_tokens) and row["endpoint"] == "responses"


def test_a_stored_response_continues_through_the_upstream(gw, upstream):  # noqa: F811
    c = oa(gw)
    first = c.responses.create(model="echo", input="alpha beta", max_output_tokens=5)
    c.responses.create(model="echo", previous_response_id=first.id, input="gamma", max_output_tokens=5)
    assert upstream.last()["body"]["messages"] == [{"role": "user", "content": "alpha beta"},
                                                   {"role": "assistant", "content": "alpha beta"},
                                                   {"role": "user", "content": "gamma"}]


def test_an_upstream_tool_call_is_a_function_call_item(gw, upstream):  # noqa: F811
    c = oa(gw)
    with c.responses.stream(model="tools", input="weather?", tools=[WEATHER, {"type": "web_search"}],
                            tool_choice="required") as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    call = final.output[0]
    assert (call.type, call.call_id, call.name, json.loads(call.arguments)) == \
        ("function_call", "call_1", "get_weather", {"city": "Paris"})
    assert kinds.count("response.function_call_arguments.delta") == 2 and kinds[-1] == "response.completed"
    sent = upstream.last()["body"]
    assert sent["tools"] == [{"type": "function", "function": {"name": "get_weather", "description": "The weather",
                                                                "parameters": WEATHER["parameters"]}}]
    assert sent["tool_choice"] == "required"
    whole = c.responses.create(model="tools", input="weather?", tools=[WEATHER])
    assert [(o.type, o.arguments) for o in whole.output] == [("function_call", '{"city": "Paris"}')]


def test_upstream_errors_before_and_after_the_first_event(gw):
    c = oa(gw)
    with pytest.raises(openai.RateLimitError):
        c.responses.create(model="status-429", input="hi", stream=True)
    with c.responses.create(model="error-event", input="one two", stream=True) as stream:
        events = list(stream)
    assert events[0].type == "response.created" and events[-1].type == "response.failed"
    assert events[-1].response.error.code == "upstream_error"
    assert "failed mid-answer" in events[-1].response.error.message
