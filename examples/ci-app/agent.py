"""A small tool-using agent loop: the model asks for tools, the app runs them and sends the results back, until the
model answers in text. The kind of code whose plumbing (tool dispatch, argument parsing, the message history,
streamed tool-call assembly) a team wants to test against a real model in CI."""

from __future__ import annotations

import json

CAPITALS = {"france": "Paris", "japan": "Tokyo", "kenya": "Nairobi", "peru": "Lima"}
TOOLS = [
    {"type": "function", "function": {
        "name": "capital_of", "description": "The capital city of a country",
        "parameters": {"type": "object", "additionalProperties": False, "required": ["country"],
                       "properties": {"country": {"type": "string", "enum": sorted(CAPITALS)}}}}},
    {"type": "function", "function": {
        "name": "add", "description": "Add two whole numbers",
        "parameters": {"type": "object", "additionalProperties": False, "required": ["a", "b"],
                       "properties": {"a": {"type": "integer", "minimum": -1000, "maximum": 1000},
                                      "b": {"type": "integer", "minimum": -1000, "maximum": 1000}}}}},
]


def run_tool(name: str, arguments: str) -> str:
    """Dispatch one call. The server's grammar guarantees the arguments parse and match the schema."""
    args = json.loads(arguments)
    if name == "capital_of":
        return CAPITALS[args["country"]]
    if name == "add":
        return str(args["a"] + args["b"])
    raise ValueError(f"unknown tool {name}")


def agent(client, model: str, question: str, max_steps: int = 3, max_tokens: int = 80) -> tuple[str, list[dict]]:
    """(answer, messages). The first turn must call a tool; later turns may answer; the last must answer."""
    messages = [{"role": "system", "content": "Use the tools to answer, then answer in one short sentence."},
                {"role": "user", "content": question}]
    for step in range(max_steps):
        choice = "required" if step == 0 else ("none" if step == max_steps - 1 else "auto")
        r = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, tool_choice=choice,
                                           parallel_tool_calls=False, temperature=0, max_tokens=max_tokens)
        message = r.choices[0].message
        if not message.tool_calls:
            return (message.content or "").strip(), messages
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            messages.append({"role": "tool", "tool_call_id": call.id,
                             "content": run_tool(call.function.name, call.function.arguments)})
    return "", messages


def streamed_calls(client, model: str, question: str) -> list[tuple[str, str]]:
    """Assemble tool calls from a stream: OpenAI's deltas carry index, id and name first, then argument pieces."""
    calls: dict[int, list[str]] = {}
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                            tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                                            temperature=0, max_tokens=80, stream=True)
    for chunk in stream:
        for d in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if d.id:
                calls[d.index] = [d.function.name, ""]
            calls[d.index][1] += d.function.arguments or ""
    return [(name, args) for name, args in (calls[i] for i in sorted(calls))]
