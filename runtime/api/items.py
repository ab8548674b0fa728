"""The checks of the Responses API's own request shapes (wire.py's RESPONSES rows): ``input`` items into the same
``Message`` tuple chat's ``messages`` make, flat function ``tools`` and ``tool_choice`` into the same ``Tools``,
``text.format`` into the same ``ResponseFormat``. Hosted tools (web search, file search, ...) are not offered to
the model: ``omitted_tools`` names them for the response. Each check emits its JSON Schema (openapi.py)."""

from __future__ import annotations

import re

from .. import grammar
from ..errors import InvalidRequest, quote
from ..grammar.tools import MAX_TOOLS
from ..types import Message, ResponseFormat, ToolCall
from .checks import _FUNCTION_NAME, _NAME, _SCHEMA, MAX_ID_CHARS, NAME_PATTERN, Check, Shape

ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}
TEXT_PARTS = ("input_text", "output_text", "text")
REFUSED_PARTS = {"input_image": "images", "input_file": "files", "input_audio": "audio"}
# Tools the model here cannot run: left out of the prompt and named in the response (reverb_omitted_tools).
HOSTED = ("web_search", "web_search_preview", "web_search_preview_2025_03_11", "web_search_2025_08_26",
          "file_search", "code_interpreter", "computer_use_preview", "computer_use", "image_generation",
          "local_shell", "shell", "apply_patch", "custom", "mcp", "namespace", "tool_search")
MAX_INCLUDE = 16


def _text(value, where: str, most: int) -> str:
    if not isinstance(value, str) or len(value) > most:
        raise InvalidRequest(f"'{where}' must be a string of at most {most} characters", param=where)
    return value


def _short(item: dict, key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS:
        raise InvalidRequest(f"'{where}.{key}' must be a string of 1 to {MAX_ID_CHARS} characters",
                             param=f"{where}.{key}")
    return value


def _content(value, where: str, most: int) -> str:
    """A message's content: a string, or text parts (``input_text``, ``output_text``); images, files and audio
    are refused by name."""
    if isinstance(value, str):
        return _text(value, where, most)
    if not isinstance(value, list):
        raise InvalidRequest(f"'{where}' must be a string or an array of content parts", param=where)
    parts = []
    for j, part in enumerate(value):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in REFUSED_PARTS:
            raise InvalidRequest(f"'{at}': {REFUSED_PARTS[kind]} are not supported: the models here read text",
                                 param=f"{at}.type")
        if kind == "refusal" and isinstance(part.get("refusal"), str):
            parts.append(part["refusal"])
            continue
        if kind not in TEXT_PARTS or not isinstance(part.get("text"), str):
            raise InvalidRequest(f"'{at}' must be a text part (input_text or output_text)", param=at)
        parts.append(part["text"])
    text = "".join(parts)
    if len(text) > most:
        raise InvalidRequest(f"'{where}' is longer than {most} characters", param=where)
    return text


class Input(Check):
    """``input``: a string (one user message) or items. Consecutive ``function_call`` items (and an assistant
    message right before them) become one assistant message with ``tool_calls``; a ``function_call_output`` is a
    tool message. ``reasoning`` items are accepted and dropped (a template is never shown its own past
    thinking)."""

    required = True

    def __call__(self, value, where, site):
        settings = site.settings
        most = settings.max_message_chars
        if isinstance(value, str):
            return (Message("user", _text(value, where, most)),)
        if not isinstance(value, list) or not value:
            raise InvalidRequest(f"'{where}' must be a string or a non-empty array of items", param=where)
        if len(value) > settings.max_messages:
            raise InvalidRequest(f"'{where}' has more than {settings.max_messages} items", param=where)
        out: list[Message] = []
        for i, item in enumerate(value):
            at = f"{where}[{i}]"
            if not isinstance(item, dict):
                raise InvalidRequest(f"'{at}' must be an object", param=at)
            kind = item.get("type", "message" if "role" in item else None)
            if kind == "message":
                role = item.get("role")
                if not isinstance(role, str) or role not in ROLES:
                    raise InvalidRequest(f"'{at}.role' must be one of {', '.join(sorted(ROLES))}",
                                         param=f"{at}.role")
                out.append(Message(ROLES[role], _content(item.get("content"), f"{at}.content", most)))
            elif kind == "function_call":
                call = ToolCall(_short(item, "call_id", at), _short(item, "name", at),
                                _text(item.get("arguments", "{}"), f"{at}.arguments", most))
                last = out[-1] if out else None
                if last is not None and last.role == "assistant" and last.tool_call_id is None:
                    out[-1] = Message("assistant", last.content, last.tool_calls + (call,))
                else:
                    out.append(Message("assistant", "", (call,)))
            elif kind == "function_call_output":
                out.append(Message("tool", _content(item.get("output"), f"{at}.output", most),
                                   tool_call_id=_short(item, "call_id", at)))
            elif kind == "reasoning":
                continue
            else:
                raise InvalidRequest(f"'{at}.type' must be 'message', 'function_call', 'function_call_output' or "
                                     f"'reasoning', not '{quote(str(kind))}'", param=f"{at}.type")
        if not out:
            raise InvalidRequest(f"'{where}' holds no message", param=where)
        return tuple(out)

    def schema(self, settings):
        text = {"type": "string", "maxLength": settings.max_message_chars}
        part = {"type": "object", "required": ["type", "text"],
                "properties": {"type": {"enum": ["input_text", "output_text"]}, "text": text}}
        short = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS}
        item = {"oneOf": [
            {"type": "object", "required": ["role", "content"], "properties": {
                "type": {"const": "message"}, "role": {"enum": sorted(ROLES)},
                "content": {"oneOf": [text, {"type": "array", "items": part}]}}},
            {"type": "object", "required": ["type", "call_id", "name", "arguments"], "properties": {
                "type": {"const": "function_call"}, "call_id": short, "name": short, "arguments": text}},
            {"type": "object", "required": ["type", "call_id", "output"], "properties": {
                "type": {"const": "function_call_output"}, "call_id": short, "output": text}},
            {"type": "object", "required": ["type"], "properties": {"type": {"const": "reasoning"}}}]}
        return {"oneOf": [text, {"type": "array", "minItems": 1, "maxItems": settings.max_messages,
                                 "items": item}]}


def omitted_tools(tools) -> tuple[str, ...]:
    """The hosted tools' types in ``tools`` (not offered to the model), in order, each once."""
    if not isinstance(tools, list):
        return ()
    kinds = [t.get("type") for t in tools if isinstance(t, dict)]
    return tuple(dict.fromkeys(k for k in kinds if k in HOSTED))


def _chat_tool_choice(choice, where: str):
    if choice is None or choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    raise InvalidRequest(f"'{where}' must be 'none', 'auto', 'required' or {{'type': 'function', 'name': ...}}",
                         param=where)


class ResponsesTools(Check):
    """``tools`` (flat function tools; hosted ones left out) with ``tool_choice`` and ``parallel_tool_calls``,
    into the same ``Tools`` chat's tools make (grammar.parse_tools checks them)."""

    always = True

    def __call__(self, value, where, site):
        source = site.source
        if value is not None and (not isinstance(value, list) or len(value) > MAX_TOOLS):
            raise InvalidRequest(f"'{where}' must be an array of at most {MAX_TOOLS} tools", param=where)
        functions, index = [], []
        for i, tool in enumerate(value or []):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind in HOSTED:
                continue
            if kind != "function":
                raise InvalidRequest(f"'{where}[{i}].type' must be 'function' or a hosted tool type, not "
                                     f"'{quote(str(kind))}'", param=f"{where}[{i}].type")
            functions.append({"type": "function", "function": {k: tool[k] for k in
                                                                ("name", "description", "parameters", "strict")
                                                                if k in tool}})
            index.append(i)
        choice = _chat_tool_choice(source.get("tool_choice"), "tool_choice")
        if choice == "auto" and not functions:
            choice = None      # only hosted tools: there is nothing to choose from
        try:
            return grammar.parse_tools(functions or None, choice, source.get("parallel_tool_calls"))
        except InvalidRequest as e:
            match = re.match(r"^tools\[(\d+)\](?:\.function)?(.*)$", e.param or "")
            if match:
                e.param = f"{where}[{index[int(match.group(1))]}]{match.group(2)}"
            elif e.param and e.param.startswith("tool_choice.function."):
                e.param = "tool_choice." + e.param.removeprefix("tool_choice.function.")
            raise

    def schema(self, settings):
        function = {"type": "object", "required": ["type", "name"],
                    "properties": {"type": {"const": "function"}, "name": _FUNCTION_NAME,
                                   "description": {"type": "string"}, "parameters": _SCHEMA,
                                   "strict": {"type": "boolean"}}}
        hosted = {"type": "object", "required": ["type"], "properties": {"type": {"enum": list(HOSTED)}}}
        return {"type": "array", "maxItems": MAX_TOOLS, "items": {"oneOf": [function, hosted]}}


RESPONSES_TOOL_CHOICE = Shape({"oneOf": [{"enum": ["none", "auto", "required"]}, {
    "type": "object", "required": ["type", "name"],
    "properties": {"type": {"const": "function"}, "name": _FUNCTION_NAME}}]})


class TextOptions(Check):
    """``text``: an object of ``format`` (its own row) and ``verbosity`` (only the default)."""

    def __call__(self, value, where, site):
        if value is None:
            return None
        if not isinstance(value, dict):
            raise InvalidRequest(f"'{where}' must be an object", param=where)
        for key in value:
            if key not in ("format", "verbosity"):
                raise InvalidRequest(f"unknown parameter '{where}.{quote(key)[:64]}'", param=f"{where}.{key[:64]}")
        if value.get("verbosity") not in (None, "medium"):
            raise InvalidRequest(f"'{where}.verbosity': only the default verbosity ('medium') is supported",
                                 param=f"{where}.verbosity")
        return value

    def schema(self, settings):
        return {"type": "object", "properties": {"format": {"type": "object"}, "verbosity": {"const": "medium"}}}


class TextFormat(Check):
    """``text.format``: ``text``, ``json_object`` or a flat ``json_schema`` (name, schema, strict, description)."""

    def __call__(self, value, p, site):
        if value is None:
            return None
        if not isinstance(value, dict):
            raise InvalidRequest(f"'{p}' must be an object", param=p)
        kind = value.get("type")
        if kind == "text":
            return None
        if kind == "json_object":
            return ResponseFormat("json_object")
        if kind != "json_schema":
            raise InvalidRequest(f"'{p}.type' must be 'text', 'json_object' or 'json_schema'", param=f"{p}.type")
        if not isinstance(value.get("name"), str) or not _NAME.match(value["name"]):
            raise InvalidRequest(f"'{p}.name' must match {NAME_PATTERN}", param=f"{p}.name")
        if value.get("strict") is not None and not isinstance(value["strict"], bool):
            raise InvalidRequest(f"'{p}.strict' must be a boolean", param=f"{p}.strict")
        if value.get("description") is not None and not isinstance(value["description"], str):
            raise InvalidRequest(f"'{p}.description' must be a string", param=f"{p}.description")
        if not isinstance(value.get("schema"), dict):
            raise InvalidRequest(f"'{p}.schema' must be a JSON Schema object", param=f"{p}.schema")
        return ResponseFormat("json_schema", value["schema"], value["name"], bool(value.get("strict")))

    def schema(self, settings):
        return {"oneOf": [
            {"type": "object", "required": ["type"], "properties": {"type": {"enum": ["text", "json_object"]}}},
            {"type": "object", "required": ["type", "name", "schema"], "properties": {
                "type": {"const": "json_schema"}, "name": {"type": "string", "pattern": NAME_PATTERN},
                "strict": {"type": "boolean"}, "description": {"type": "string"}, "schema": _SCHEMA}}]}


class Include(Check):
    """``include``: an array of strings, accepted."""

    def __call__(self, value, where, site):
        if value is not None and not (isinstance(value, list) and len(value) <= MAX_INCLUDE
                                      and all(isinstance(v, str) and len(v) <= 128 for v in value)):
            raise InvalidRequest(f"'{where}' must be an array of at most {MAX_INCLUDE} strings", param=where)
        return value

    def schema(self, settings):
        return {"type": "array", "maxItems": MAX_INCLUDE, "items": {"type": "string"}}


class Whatever(Check):
    """Any JSON value, accepted with no effect (a client's own bookkeeping)."""

    def schema(self, settings):
        return {}
