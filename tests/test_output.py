"""One choice's output: text, tool-call pieces and the rule that a repeated call ends the answer."""

from __future__ import annotations

import functools
import json

from reverb.backends.llama.output import ChoiceOutput, Constraint
from reverb.grammar import ToolCallParser

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "%s"}}\n</tool_call>\n'


def run(text: str, step: int = 3) -> tuple[ChoiceOutput, list]:
    out = ChoiceOutput(0, (), Constraint(tool_parser=functools.partial(ToolCallParser, {"get_weather"})))
    chunks = []
    for i in range(0, len(text), step):
        c = out.feed(text[i:i + step].encode())
        if c is not None:
            chunks.append(c)
        if out.stopped:
            break
    c = out.flush()
    if c is not None:
        chunks.append(c)
    return out, chunks


def calls(chunks) -> list[dict]:
    got: list[dict] = []
    for c in chunks:
        for d in c.tool_calls:
            if d.id is not None:
                assert d.name and d.id.startswith("call_")
                got.append({"name": d.name, "arguments": ""})
            got[d.index]["arguments"] += d.arguments
    return got


def test_the_first_call_streams_name_first_then_arguments_in_pieces():
    out, chunks = run(CALL % "Paris", step=2)
    pieces = [d for c in chunks for d in c.tool_calls]
    assert pieces[0].id is not None and pieces[0].name == "get_weather" and pieces[0].index == 0
    assert len(pieces) > 3 and all(p.id is None and p.name is None for p in pieces[1:])
    assert [json.loads(c["arguments"]) for c in calls(chunks)] == [{"city": "Paris"}]
    assert out.called and not "".join(c.text for c in chunks)


def test_a_repeated_call_ends_the_answer_and_is_not_sent():
    out, chunks = run(CALL % "Paris" + CALL % "Rome" + CALL % "Paris" + CALL % "Oslo")
    assert [json.loads(c["arguments"])["city"] for c in calls(chunks)] == ["Paris", "Rome"]
    assert out.stopped and out.ended


def test_a_later_call_cut_off_is_dropped():
    out, chunks = run(CALL % "Paris" + CALL[:40])
    assert [json.loads(c["arguments"])["city"] for c in calls(chunks)] == ["Paris"]


def test_text_around_calls_stays_content():
    _, chunks = run("Let me check. " + CALL % "Paris")
    assert "".join(c.text for c in chunks).strip() == "Let me check."
    assert len(calls(chunks)) == 1
