"""tools / tool_choice validation, tool grammars, fallback prompt rendering (pure Python, no model)."""
import json
import re

import pytest

from reverb.errors import InvalidRequest
from reverb.grammar import TRIGGER_PATTERN, parse_tools, tool_grammar
from reverb.types import Message, ResponseFormat, ToolCall
from reverb.grammar.tool_prompt import fallback_messages, template_supports_tools, tools_system_text, use_native_tools

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time"}}


def test_defaults():
    assert parse_tools(None) is None and parse_tools([], "none") is None
    plan = parse_tools([WEATHER, TIME])
    assert (plan.choice, plan.forced, plan.parallel) == ("auto", None, True)


@pytest.mark.parametrize("kw,param", [
    (dict(tools=[{"type": "code"}]), "tools[0].type"),
    (dict(tools=[{"type": "function", "function": {"name": "a b"}}]), "tools[0].function.name"),
    (dict(tools=[WEATHER, WEATHER]), "tools"),
    (dict(tools=[WEATHER], tool_choice="maybe"), "tool_choice"),
    (dict(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}),
     "tool_choice.function.name"),
    (dict(tools=None, tool_choice="required"), "tool_choice"),
    (dict(tools=[WEATHER], parallel_tool_calls="yes"), "parallel_tool_calls"),
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]),
     "tools[0].function.parameters"),
])
def test_errors(kw, param):
    with pytest.raises(InvalidRequest) as e:
        parse_tools(**kw)
    assert e.value.param == param


def test_parameter_schema_errors_name_the_tool():
    bad = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"n": {"type": "integer", "multipleOf": 3}}}}}
    with pytest.raises(InvalidRequest) as e:
        tool_grammar(parse_tools([WEATHER, bad], "required"))
    assert e.value.param == "tools[1].function.parameters.properties.n.multipleOf"


def test_grammar_kinds():
    assert tool_grammar(parse_tools([WEATHER], "none")) is None
    json_object = ResponseFormat("json_object")
    assert tool_grammar(parse_tools([WEATHER], "none"), json_object).grammar.startswith("root ::= object")
    req = tool_grammar(parse_tools([WEATHER, TIME], "required", False))
    assert not req.lazy and "get_time" in req.grammar and "tool-call (" not in req.grammar
    named = tool_grammar(parse_tools([WEATHER, TIME], {"type": "function", "function": {"name": "get_time"}}))
    assert "get_time" in named.grammar and "get_weather" not in named.grammar
    auto = tool_grammar(parse_tools([WEATHER]))
    assert auto.lazy and auto.trigger_patterns == (TRIGGER_PATTERN,)
    mixed = tool_grammar(parse_tools([WEATHER]), ResponseFormat("json_object"))
    assert not mixed.lazy and mixed.grammar.startswith("root ::= tool-calls | object")


def test_trigger_pattern_fires_only_on_safe_remainders():
    r = re.compile(TRIGGER_PATTERN)  # searched with Python's re by the grammar matcher (\\Z: the very end)
    for ok in ["<tool_call>", "x <tool_call>\n", '<tool_call>\n{"', '<tool_call>\n{"name": "', '<tool_call>{"na',
               "<tool_call>\t", "<tool_call>\r\n", "<tool_call>\n\n\n", "<tool_call>  {",
               # a whole opening anywhere: the grammar then judges the rest (and refuses a token it would not take)
               '<tool_call>\n{"name": "g', '<tool_call>{"name":"f", "arguments": {}}</tool_call> and on']:
        assert r.search(ok), ok
    for no in ["<tool_call>x", "<tool_call>\n\n\n\n\n", '<tool_call>\n{"arguments"', "<tool_call>\f",
               '<tool_call>{"nam" ']:
        assert not r.search(no), no


def test_template_detection():
    assert template_supports_tools("{% if tools %}...{% for c in message.tool_calls %}")
    assert not template_supports_tools("{% for message in messages %}{{ message['content'] }}{% endfor %}")
    assert not template_supports_tools(None)
    qwen = "{% if tools %}<tools>{% endif %}{% for tc in message.tool_calls %}<tool_call>\n{{ tc }}</tool_call>"
    llama31 = "{% if tools %}...{% for tc in message.tool_calls %}{\"name\": ...}<|eom_id|>"
    assert use_native_tools(qwen) and not use_native_tools(llama31) and template_supports_tools(llama31)


def test_system_text_and_fallback_messages():
    plan = parse_tools([WEATHER, TIME], "required", False)
    text = tools_system_text(plan)
    assert '"name": "get_weather"' in text and "<tool_call>" in text and "must call" in text and "at most one" in text
    assert tools_system_text(parse_tools([WEATHER], "none")) == ""
    msgs = [Message("system", "Be brief."), Message("user", "Weather in Paris and time?"),
            Message("assistant", "", (ToolCall("call_1", "get_weather", '{"city":"Paris"}'),
                                      ToolCall("call_2", "get_time", "{}"))),
            Message("tool", "sunny", tool_call_id="call_1"), Message("tool", "12:00", tool_call_id="call_2")]
    out = fallback_messages(msgs, plan)
    assert [m.role for m in out] == ["system", "user", "assistant", "user"]
    assert out[0].content.startswith("Be brief.\n\n# Tools")
    blocks = re.findall(r"<tool_call>\n(.*?)\n</tool_call>", out[2].content)
    assert [json.loads(b) for b in blocks] == [{"name": "get_weather", "arguments": {"city": "Paris"}},
                                               {"name": "get_time", "arguments": {}}]
    assert out[3].content == "<tool_response>\nsunny\n</tool_response>\n<tool_response>\n12:00\n</tool_response>"
    assert all(not m.tool_calls and m.tool_call_id is None for m in out)
