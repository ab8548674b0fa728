"""The agent loop's own tests, against the tiny model through reverb's pytest plugin. A 135M model is no reasoner,
but its tool calls are always well-formed (the server enforces the schemas), so the plumbing can be tested for real."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from agent import CAPITALS, TOOLS, agent, run_tool, streamed_calls  # noqa: E402

SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def without_ids(messages: list[dict]) -> str:
    return json.dumps([{k: v for k, v in m.items() if k != "tool_call_id"} | (
        {"tool_calls": [{**c, "id": None} for c in m["tool_calls"]]} if "tool_calls" in m else {}) for m in messages])


def test_the_loop_calls_a_tool_sends_the_result_back_and_answers(reverb):
    """The whole loop, run twice: the same answer and history both times but for the call ids (greedy, on the
    fixture's deterministic server)."""
    (answer, messages), (again, history) = (agent(reverb.client, reverb.model, "Add 2 and 3.") for _ in range(2))
    roles = [m["role"] for m in messages]
    assert roles[:3] == ["system", "user", "assistant"] and "tool" in roles
    call = messages[2]["tool_calls"][0]
    assert call["function"]["name"] in SCHEMAS
    result = next(m for m in messages if m["role"] == "tool")
    assert result["tool_call_id"] == call["id"]
    assert result["content"] == run_tool(call["function"]["name"], call["function"]["arguments"])
    assert isinstance(answer, str)
    assert any(m.get("content") == "5" for m in messages if m["role"] == "tool")  # add(2, 3) ran
    assert again == answer and without_ids(history) == without_ids(messages)


def test_tool_arguments_always_fit_the_schema(reverb):
    for question in ("Capital of Peru?", "What is 40 plus 2?", "Tell me a joke."):
        r = reverb.client.chat.completions.create(model=reverb.model, tools=TOOLS, tool_choice="required",
                                                  parallel_tool_calls=False, temperature=0, max_tokens=80,
                                                  messages=[{"role": "user", "content": question}])
        for call in r.choices[0].message.tool_calls:
            args = json.loads(call.function.arguments)
            assert set(args) == set(SCHEMAS[call.function.name]["required"])
            run_tool(call.function.name, call.function.arguments)  # never raises: valid country, whole numbers
            if call.function.name == "capital_of":
                assert args["country"] in CAPITALS


def test_streamed_calls_assemble_to_the_blocking_ones(reverb):
    question = "What is the capital of Kenya?"
    streamed = streamed_calls(reverb.client, reverb.model, question)
    r = reverb.client.chat.completions.create(model=reverb.model, tools=TOOLS, tool_choice="required",
                                              parallel_tool_calls=False, temperature=0, max_tokens=80,
                                              messages=[{"role": "user", "content": question}])
    assert streamed == [(c.function.name, c.function.arguments) for c in r.choices[0].message.tool_calls]
