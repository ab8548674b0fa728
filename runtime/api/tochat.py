"""An Ask as the chat-completions body an upstream is sent, for dialects that do not speak chat themselves
(Responses): built from the checked values, never from the client's raw body, so what reaches the upstream is
exactly what reverb checked and would have served itself. The upstream backend adds the model, streaming and the
max_tokens the credit hold was made for (backends/upstream/wire.py)."""

from __future__ import annotations

from ..request import Ask
from ..types import Message, SamplingParams

DEFAULTS = SamplingParams()
SAMPLING = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty")


def _message(m: Message) -> dict:
    out: dict = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["content"] = m.content or None
        out["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                             for c in m.tool_calls]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


def chat_body(ask: Ask) -> dict:
    body: dict = {"messages": [_message(m) for m in ask.messages]}
    params = ask.sampling
    for name in SAMPLING:
        if getattr(params, name) != getattr(DEFAULTS, name):
            body[name] = getattr(params, name)
    if params.max_tokens is not None:
        body["max_tokens"] = params.max_tokens
    if params.stop:
        body["stop"] = list(params.stop)
    rf = ask.response_format
    if rf is not None:
        body["response_format"] = {"type": "json_object"} if rf.kind == "json_object" or rf.schema is None else {
            "type": "json_schema", "json_schema": {"name": rf.name or "answer", "schema": rf.schema,
                                                   "strict": rf.strict}}
    tools = ask.tools
    if tools is not None:
        body["tools"] = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                           **({"parameters": t.parameters} if t.parameters
                                                              is not None else {})}} for t in tools.tools]
        body["tool_choice"] = ({"type": "function", "function": {"name": tools.forced}} if tools.forced
                               else tools.choice)
        if not tools.parallel:
            body["parallel_tool_calls"] = False
    return body
