"""The ``messages`` checks: a conversation for a model served here (every role, tool call and content part
checked), and the lighter check of a conversation relayed to an upstream (shape and size only)."""

from __future__ import annotations

import json

from ..errors import InvalidRequest
from ..settings import Settings
from ..types import Message, ToolCall
from .checks import MAX_ID_CHARS, Check

ROLES = {"system", "user", "assistant", "developer", "tool"}
MAX_TOOL_CALLS = 128      # per assistant message


def _bounded_list(value, where: str, most: int) -> None:
    """The shape both message checks start with: a non-empty array of at most ``most`` items."""
    if not isinstance(value, list) or not value:
        raise InvalidRequest(f"'{where}' must be a non-empty array", param=where)
    if len(value) > most:
        raise InvalidRequest(f"'{where}' has more than {most} messages", param=where)


class Messages(Check):
    """The conversation. Assistant messages may carry ``tool_calls`` (content then may be null); ``tool`` messages
    answer one by ``tool_call_id``."""

    required = True

    def __call__(self, value, where, site):
        settings = site.settings
        _bounded_list(value, where, settings.max_messages)
        out = []
        for i, m in enumerate(value):
            at = f"{where}[{i}]"
            if not isinstance(m, dict):
                raise InvalidRequest(f"'{at}' must be an object", param=at)
            role = m.get("role")
            if not isinstance(role, str) or role not in ROLES:
                raise InvalidRequest(f"'{at}.role' must be one of {', '.join(sorted(ROLES))}", param=f"{at}.role")
            for field in ("audio", "function_call"):  # assistant audio references and the deprecated call
                if m.get(field) is not None:
                    raise InvalidRequest(f"'{at}.{field}' is not supported", param=f"{at}.{field}")
            calls = _tool_calls(m.get("tool_calls"), f"{at}.tool_calls", role, settings)
            content = _content(m.get("content"), f"{at}.content", role)
            thought = _reasoning(m.get("reasoning_content"), f"{at}.reasoning_content", role)
            if len(content) + len(thought) + sum(len(c.arguments) for c in calls) > settings.max_message_chars:
                raise InvalidRequest(f"'{at}.content' is longer than {settings.max_message_chars} characters",
                                     param=f"{at}.content")
            call_id = _short_text(m, "tool_call_id", at, required=role == "tool") if role == "tool" else None
            name = _short_text(m, "name", at)
            out.append(Message("system" if role == "developer" else role, content, calls, call_id, name, thought))
        return tuple(out)

    def schema(self, settings):
        text = {"type": "string", "maxLength": settings.max_message_chars}
        short = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS}
        call = {"type": "object", "required": ["id", "type", "function"],
                "properties": {"id": short, "type": {"const": "function"},
                               "function": {"type": "object", "required": ["name", "arguments"],
                                            "properties": {"name": short, "arguments": text}}}}
        message = {
            "type": "object", "required": ["role", "content"],
            "properties": {"role": {"enum": sorted(ROLES)},
                           "content": {"oneOf": [text, {"type": "null"}, {"type": "array", "items": {
                               "type": "object", "required": ["type", "text"],
                               "properties": {"type": {"const": "text"}, "text": text}}}]},
                           "name": short, "tool_call_id": short,
                           "reasoning_content": {"oneOf": [text, {"type": "null"}]},
                           "tool_calls": {"type": "array", "maxItems": MAX_TOOL_CALLS, "items": call}},
        }
        return {"type": "array", "items": message, "minItems": 1, "maxItems": settings.max_messages}


class RelayMessages(Messages):
    """The messages of a request relayed to an upstream: only their shape and size (the upstream checks the
    rest), their content as text for the token estimate."""

    def __call__(self, value, where, site):
        settings = site.settings
        _bounded_list(value, where, settings.max_messages)
        out = []
        for i, m in enumerate(value):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise InvalidRequest(f"'{where}[{i}]' must be an object with a string 'role'", param=f"{where}[{i}]")
            content = m.get("content")
            text = content if isinstance(content, str) else "" if content is None else json.dumps(content)
            if len(text) > settings.max_message_chars:
                raise InvalidRequest(f"'{where}[{i}].content' is longer than {settings.max_message_chars} "
                                     "characters", param=f"{where}[{i}].content")
            out.append(Message(m["role"], text))
        return tuple(out)


def _short_text(m: dict, key: str, where: str, required: bool = False) -> str | None:
    value = m.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS:
        raise InvalidRequest(f"'{where}.{key}' must be a string of 1 to {MAX_ID_CHARS} characters",
                             param=f"{where}.{key}")
    return value


def _tool_calls(value, where: str, role: str, settings: Settings) -> tuple[ToolCall, ...]:
    if value is None:
        return ()
    if role != "assistant":
        raise InvalidRequest(f"'{where}' is only allowed on assistant messages", param=where)
    if not isinstance(value, list) or len(value) > MAX_TOOL_CALLS:
        raise InvalidRequest(f"'{where}' must be an array of at most {MAX_TOOL_CALLS} calls", param=where)
    out = []
    for j, call in enumerate(value):
        at = f"{where}[{j}]"
        if not isinstance(call, dict) or call.get("type", "function") != "function":
            raise InvalidRequest(f"'{at}' must be a function call", param=f"{at}.type")
        fn = call.get("function")
        if not isinstance(fn, dict):
            raise InvalidRequest(f"'{at}.function' must be an object", param=f"{at}.function")
        call_id = _short_text(call, "id", at, required=True)
        name = _short_text(fn, "name", f"{at}.function", required=True)
        args = fn.get("arguments", "{}")
        if not isinstance(args, str) or len(args) > settings.max_message_chars:
            raise InvalidRequest(f"'{at}.function.arguments' must be a string of JSON",
                                 param=f"{at}.function.arguments")
        out.append(ToolCall(call_id, name, args))
    return tuple(out)


def _reasoning(value, where: str, role: str) -> str:
    """An assistant's earlier thought, sent back (docs/reasoning.md): a thinking template may render it."""
    if value is None:
        return ""
    if role != "assistant":
        raise InvalidRequest(f"'{where}' is only allowed on assistant messages", param=where)
    if not isinstance(value, str):
        raise InvalidRequest(f"'{where}' must be a string", param=where)
    return value


def _content(value, where: str, role: str) -> str:
    if isinstance(value, str):
        return value
    if value is None and role == "assistant":
        return ""
    if isinstance(value, list):  # OpenAI content parts: only text parts can be served by a text model
        parts = []
        for j, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequest(f"'{where}[{j}]' must be a text part", param=f"{where}[{j}]")
            parts.append(part["text"])
        return "".join(parts)
    raise InvalidRequest(f"'{where}' must be a string", param=where)
