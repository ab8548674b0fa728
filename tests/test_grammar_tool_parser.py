"""Streaming and whole-text tool-call parsing."""
import itertools
import json
import re

import pytest

from reverb.grammar import TRIGGER_PATTERN
from reverb.grammar.tool_parser import ToolCallParser, new_call_id, parse_tool_calls

TWO = ('I will check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa\\"ris}", "n": [1,{"a":2}]}}\n'
       '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>\n')


def ids():
    c = itertools.count()
    return lambda: f"call_{next(c)}"


def stream(text, chunk, names=None):
    p = ToolCallParser(names, ids())
    events = []
    for i in range(0, len(text), chunk):
        events += p.feed(text[i:i + chunk])
    return p, events + p.finish()


def rebuild(events):
    content, calls = "", {}
    for e in events:
        content += e.get("content", "")
        for d in e.get("tool_calls", []):
            c = calls.setdefault(d["index"], {"id": d.get("id"), "name": d.get("function", {}).get("name"), "args": ""})
            c["args"] += d["function"].get("arguments", "")
    return content, calls


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1000])
def test_streaming_matches_whole(chunk):
    p, events = stream(TWO, chunk)
    content, calls = rebuild(events)
    assert content == p.content == "I will check."
    assert [c["function"]["name"] for c in p.tool_calls] == ["get_weather", "get_time"]
    assert json.loads(p.tool_calls[0]["function"]["arguments"]) == {"city": 'Pa"ris}', "n": [1, {"a": 2}]}
    whole = {i: c["function"]["arguments"] for i, c in enumerate(p.tool_calls)}
    assert {i: c["args"] for i, c in calls.items()} == whole
    first = next(e for e in events if "tool_calls" in e)["tool_calls"][0]
    assert first["id"] == "call_0" and first["type"] == "function" and first["function"]["arguments"] == ""


def test_arguments_stream_in_pieces_before_close():
    p = ToolCallParser(None, ids())
    p.feed('<tool_call>\n{"name": "f", "arguments": {"a": ')
    ev = p.feed('"xy')
    assert ev == [{"tool_calls": [{"index": 0, "function": {"arguments": '"xy'}}]}]


def test_other_key_order_and_string_arguments_stay_content():
    """The lazy grammar takes over only from the name-first opening, so any other block was never constrained."""
    text = ('<tool_call>{"arguments": {"x": 1}, "name": "f"}</tool_call>'
            '<tool_call>{"name": "g", "arguments": "{\\"y\\": 2}"}</tool_call>')
    for chunk in (1, 100):
        p, _ = stream(text, chunk)
        assert p.tool_calls == [] and p.content == text


OPENINGS = ["", "\t", "\r\n", "\n\n\n", "  ", " \t\r\n"]


@pytest.mark.parametrize("ws", OPENINGS + ["\n\n\n\n\n", "\f", "\u00a0"])
@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_the_parser_and_the_trigger_accept_the_same_openings(ws, chunk):
    """A block is a call exactly when its opening is one the lazy trigger fires on wherever a token ends (the grammar
    then holds the rest); with the model's tokens and grammar in test_grammar_engine."""
    text = f'<tool_call>{ws}{{"name": "f", "arguments": {{"a": 1}}}}\n</tool_call>'
    p, _ = stream(text, chunk)
    opening = text[:text.index('"name": "') + len('"name": "')]
    fires_throughout = all(re.search(TRIGGER_PATTERN, opening[:i]) for i in range(len("<tool_call>"), len(opening) + 1))
    assert fires_throughout == (ws in OPENINGS) == bool(p.tool_calls)
    if not p.tool_calls:
        assert p.content == text.strip()


def test_invalid_or_unknown_blocks_stay_content():
    assert parse_tool_calls('<tool_call>{"name": "zz", "arguments": {}}</tool_call>', {"a"})[1] == []
    content, calls = parse_tool_calls("<tool_call>not json</tool_call> ok")
    assert calls == [] and content == "<tool_call>not json</tool_call> ok"
    assert parse_tool_calls("a < b <tool") == ("a < b <tool", [])


def test_truncated_call_keeps_partial_arguments():
    p, _ = stream('<tool_call>\n{"name": "f", "arguments": {"a": "unfin', 4)
    assert p.tool_calls[0]["function"]["arguments"] == '{"a": "unfin'


def test_unstarted_block_at_end_is_content():
    assert parse_tool_calls("hi <tool_call>\n{\"na") == ('hi <tool_call>\n{"na', [])


def test_call_ids():
    a, b = new_call_id(), new_call_id()
    assert a.startswith("call_") and len(a) == 29 and a != b
