"""A checked Ask as a Chat Completions request body: what a model behind an OpenAI-compatible upstream is sent for a
dialect that is not chat (Responses, Messages). Every field the Ask holds is written in chat's terms (messages with
tool calls and tool results, tools and tool_choice, response_format, the sampling that differs from the defaults),
so the upstream is asked exactly what a local model would be; the upstream backend then sets the model, streaming
and the max_tokens the credit hold was made for.
"""

from __future__ import annotations

from ..request import Ask
from ..types import Message, SamplingParams, Tools

DEFAULTS = SamplingParams()
SAMPLING = ("temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty", "frequency_penalty")


def request(ask: Ask) -> dict:
    body: dict = {"messages": [_message(m) for m in ask.messages]}
    params = ask.sampling
    for name in SAMPLING:
        if getattr(params, name) != getattr(DEFAULTS, name):
            body[name] = getattr(params, name)
    if params.stop:
        body["stop"] = list(params.stop)
    if params.max_tokens is not None:
        body["max_tokens"] = params.max_tokens
    if ask.tools is not None:
        body.update(_tools(ask.tools))
    rf = ask.response_format
    if rf is not None:
        body["response_format"] = ({"type": "json_object"} if rf.kind == "json_object" or rf.schema is None else
                                   {"type": "json_schema", "json_schema": {"name": rf.name or "output",
                                                                           "schema": rf.schema, "strict": rf.strict}})
    if ask.prediction is not None:
        body["prediction"] = {"type": "content", "content": ask.prediction}
    return body


def _message(m: Message) -> dict:
    out: dict = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["content"] = m.content or None
        out["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                             for c in m.tool_calls]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        out["name"] = m.name
    return out


def _tools(tools: Tools) -> dict:
    fns = []
    for t in tools.tools:
        fn: dict = {"name": t.name}
        if t.description:
            fn["description"] = t.description
        if t.parameters is not None:
            fn["parameters"] = t.parameters
        fns.append({"type": "function", "function": fn})
    choice = ({"type": "function", "function": {"name": tools.forced}} if tools.forced is not None
              else tools.choice)
    out = {"tools": fns, "tool_choice": choice}
    if not tools.parallel:
        out["parallel_tool_calls"] = False
    return out
