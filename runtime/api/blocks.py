"""The checks of Anthropic's Messages request fields (wire.py's ``messages`` dialect rows): ``system`` and
``messages`` with their content blocks into the same ``Message`` tuple chat builds, ``tools`` / ``tool_choice``
into the same ``Tools`` value, ``thinking`` into ``Ask.thinking``, ``output_config.format`` into a
``ResponseFormat``, and the ceiling ``max_tokens``.

Blocks a text model cannot read (``image``, ``document``, ``search_result``, server tools' results) are refused
naming their path; ``thinking`` blocks an assistant sent back are dropped from the prompt (Anthropic drops earlier
turns' thinking too); ``cache_control`` and ``citations`` are accepted with no effect (prompt prefixes are reused
automatically).
"""

from __future__ import annotations

import json

from .. import grammar
from ..errors import InvalidRequest, quote
from ..grammar.tools import MAX_TOOLS
from ..types import Message, ResponseFormat, ToolCall
from .checks import MAX_ID_CHARS, NAME_PATTERN, Check, Integer, Shape
from .conversation import MAX_TOOL_CALLS, _bounded_list

ROLES = ("user", "assistant", "system")     # system: a mid-conversation system message (Claude Code sends them)
SKIPPED = ("thinking", "redacted_thinking")        # an assistant's earlier thinking: not part of the prompt
TEXT = {"type": "string"}
MOST_TOKENS = 1 << 31                               # a ceiling max_tokens: any positive int32 is read


def wire_param(param: str) -> str:
    """A backend's OpenAI-named param on Messages' wire (stop -> stop_sequences, a tool's function.parameters ->
    its input_schema, response_format -> output_config.format)."""
    for ours, theirs in (("stop", "stop_sequences"), ("response_format", "output_config.format")):
        if param == ours or param.startswith(ours + "."):
            return theirs + param[len(ours):]
    if param.startswith("tools["):
        return param.replace(".function.parameters", ".input_schema", 1).replace(".function.", ".", 1)
    return param


class MaxTokens(Integer):
    """Anthropic's ``max_tokens``: required, and a ceiling: above ``--max-tokens-cap`` it is lowered to the cap,
    above what the context leaves the service lowers it to fit (``Ask.fit``)."""
    required = True

    def __init__(self):
        super().__init__(1, MOST_TOKENS)

    def __call__(self, value, where, site):
        if value is None:
            raise InvalidRequest(f"'{where}' is required", param=where)
        return min(super().__call__(value, where, site), site.settings.max_tokens_cap)

    def schema(self, settings):
        return {"type": "integer", "minimum": 1}


def _text(value, where: str, most: int) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"'{where}' must be a string", param=where)
    if len(value) > most:
        raise InvalidRequest(f"'{where}' is longer than {most} characters", param=where)
    return value


def _texts(value, where: str, most: int, what: str) -> str:
    """A string, or an array of text blocks (joined): ``system`` and a tool result's content."""
    if isinstance(value, str):
        return _text(value, where, most)
    if not isinstance(value, list) or len(value) > MAX_TOOL_CALLS:
        raise InvalidRequest(f"'{where}' must be a string or an array of at most {MAX_TOOL_CALLS} text blocks",
                             param=where)
    parts = []
    for j, block in enumerate(value):
        at = f"{where}[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind != "text":
            raise _unreadable(kind, f"{at}.type", what)
        parts.append(_text(block.get("text"), f"{at}.text", most))
    out = "\n".join(parts)
    if len(out) > most:
        raise InvalidRequest(f"'{where}' is longer than {most} characters", param=where)
    return out


def _unreadable(kind, where: str, what: str = "content") -> InvalidRequest:
    if kind in ("image", "document", "search_result", "container_upload"):
        return InvalidRequest(f"'{where}': {kind} blocks are not supported: the models here read text only",
                              param=where)
    shown = f"'{quote(kind)}'" if isinstance(kind, str) else "missing"
    return InvalidRequest(f"'{where}' {shown} is not a {what} block type supported here", param=where)


class System(Check):
    """``system``: a string or text blocks (the first message of the prompt)."""

    def __call__(self, value, where, site):
        if value is None:
            return None
        return _texts(value, where, site.settings.max_message_chars, "system")

    def schema(self, settings):
        return {"oneOf": [TEXT, {"type": "array", "items": {"type": "object", "required": ["type", "text"],
                                                            "properties": {"type": {"const": "text"}, "text": TEXT}}}]}


class Conversation(Check):
    """``messages`` (with ``system`` read beside it): user and assistant turns of text, ``tool_use`` and
    ``tool_result`` blocks, as the Message tuple chat builds: an assistant's tool_use blocks are its tool calls
    (``input`` as JSON text), a user's tool_result blocks are ``tool`` messages before its text."""

    required = True

    def __call__(self, value, where, site):
        settings = site.settings
        most = settings.max_message_chars
        out = []
        system = System()(site.source.get("system"), "system", site)
        if system:
            out.append(Message("system", system))
        _bounded_list(value, where, settings.max_messages)
        for i, m in enumerate(value):
            at = f"{where}[{i}]"
            if not isinstance(m, dict):
                raise InvalidRequest(f"'{at}' must be an object", param=at)
            role = m.get("role")
            if role not in ROLES:
                raise InvalidRequest(f"'{at}.role' must be 'user', 'assistant' or 'system'", param=f"{at}.role")
            content = m.get("content")
            if role == "system":
                out.append(Message("system", _texts(content, f"{at}.content", most, "system")))
                continue
            if isinstance(content, str):
                out.append(Message(role, _text(content, f"{at}.content", most)))
                continue
            if not isinstance(content, list) or len(content) > settings.max_messages:
                raise InvalidRequest(f"'{at}.content' must be a string or an array of at most "
                                     f"{settings.max_messages} blocks", param=f"{at}.content")
            out += _blocks(content, f"{at}.content", role, most)
        return tuple(out)

    def schema(self, settings):
        block = {"type": "object", "required": ["type"], "properties": {
            "type": {"enum": ["text", "tool_use", "tool_result", "thinking", "redacted_thinking"]},
            "text": TEXT, "id": TEXT, "name": TEXT, "input": {"type": "object"}, "tool_use_id": TEXT,
            "content": {"oneOf": [TEXT, {"type": "array"}]}, "is_error": {"type": "boolean"}}}
        message = {"type": "object", "required": ["role", "content"], "properties": {
            "role": {"enum": list(ROLES)},
            "content": {"oneOf": [TEXT, {"type": "array", "maxItems": settings.max_messages, "items": block}]}}}
        return {"type": "array", "items": message, "minItems": 1, "maxItems": settings.max_messages}


def _blocks(content: list, where: str, role: str, most: int) -> list[Message]:
    texts, calls, results = [], [], []
    size = 0
    for j, block in enumerate(content):
        at = f"{where}[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(_text(block.get("text"), f"{at}.text", most))
            size += len(texts[-1])
        elif kind == "tool_use" and role == "assistant":
            if len(calls) >= MAX_TOOL_CALLS:
                raise InvalidRequest(f"'{where}' has more than {MAX_TOOL_CALLS} tool_use blocks", param=where)
            args = block.get("input", {})
            if not isinstance(args, dict):
                raise InvalidRequest(f"'{at}.input' must be an object", param=f"{at}.input")
            calls.append(ToolCall(_id(block, "id", at), _id(block, "name", at),
                                  json.dumps(args, ensure_ascii=False)))
            size += len(calls[-1].arguments)
        elif kind == "tool_result" and role == "user":
            text = "" if block.get("content") is None else _texts(block["content"], f"{at}.content", most,
                                                                 "tool_result content")
            if block.get("is_error") is not None and not isinstance(block["is_error"], bool):
                raise InvalidRequest(f"'{at}.is_error' must be a boolean", param=f"{at}.is_error")
            results.append(Message("tool", text, tool_call_id=_id(block, "tool_use_id", at)))
            size += len(text)
        elif kind in SKIPPED and role == "assistant":
            continue
        elif kind in ("tool_use", "tool_result") or kind in SKIPPED:
            owner = "user" if kind == "tool_result" else "assistant"
            raise InvalidRequest(f"'{at}.type': {kind} blocks belong in {owner} messages", param=f"{at}.type")
        else:
            raise _unreadable(kind, f"{at}.type")
        if size > most:
            raise InvalidRequest(f"'{where}' is longer than {most} characters", param=where)
    text = "".join(texts)
    if role == "assistant":
        return [Message("assistant", text, tuple(calls))]
    return results + ([Message("user", text)] if texts or not results else [])


def _id(block: dict, key: str, where: str) -> str:
    value = block.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS:
        raise InvalidRequest(f"'{where}.{key}' must be a string of 1 to {MAX_ID_CHARS} characters",
                             param=f"{where}.{key}")
    return value


# Our Tools checks speak OpenAI's paths; these put them back on Anthropic's wire.
_PATHS = ((".function.parameters", ".input_schema"), (".function.name", ".name"),
          (".function.description", ".description"), (".function.strict", ".strict"))


class AnthropicTools(Check):
    """``tools`` (custom tools: ``name``, ``description``, ``input_schema``) with ``tool_choice`` read beside it,
    into the Tools value chat builds: ``auto``, ``any`` (must call one), ``tool`` (must call that one), ``none``;
    ``disable_parallel_tool_use`` allows at most one call. Server tools (a ``type`` other than ``custom``) are
    refused naming them: nothing here runs them."""

    always = True

    def __call__(self, value, where, site):
        tools = None
        if value is not None:
            if not isinstance(value, list) or len(value) > MAX_TOOLS:
                raise InvalidRequest(f"'{where}' must be an array of at most {MAX_TOOLS} tools", param=where)
            tools = [self._tool(t, f"{where}[{i}]") for i, t in enumerate(value)]
        choice, parallel = _choice(site.source.get("tool_choice"))
        try:
            return grammar.parse_tools(tools, choice, parallel)
        except InvalidRequest as e:
            param = e.param or where
            for ours, theirs in _PATHS:
                param = param.replace(ours, theirs)
            e.param = "tool_choice" if param.startswith("tool_choice") else param
            raise

    @staticmethod
    def _tool(tool, at: str) -> dict:
        if not isinstance(tool, dict):
            raise InvalidRequest(f"'{at}' must be an object", param=at)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise InvalidRequest(f"'{at}.type': '{quote(str(kind))}' is a server tool, which is not supported "
                                 "here (only custom tools with an input_schema)", param=f"{at}.type")
        if not isinstance(tool.get("input_schema"), dict):
            raise InvalidRequest(f"'{at}.input_schema' must be a JSON Schema object", param=f"{at}.input_schema")
        if tool.get("strict") is not None and not isinstance(tool["strict"], bool):
            raise InvalidRequest(f"'{at}.strict' must be a boolean", param=f"{at}.strict")
        schema = tool["input_schema"] if tool.get("strict") else relaxed(tool["input_schema"])
        fn = {"name": tool.get("name"), "parameters": schema}
        if tool.get("description") is not None:
            fn["description"] = tool["description"]
        return {"type": "function", "function": fn}

    def schema(self, settings):
        tool = {"type": "object", "required": ["name", "input_schema"], "properties": {
            "name": {"type": "string", "pattern": NAME_PATTERN}, "description": TEXT, "type": {"const": "custom"},
            "input_schema": {"type": "object", "description": "a JSON Schema with type 'object'"}}}
        return {"type": "array", "maxItems": MAX_TOOLS, "items": tool}


MAX_RELAXED = 256     # keywords dropped from one schema before it is read as any object


def relaxed(schema: dict) -> dict:
    """A tool's ``input_schema`` without the keywords the grammar cannot enforce (a copy; the schema itself when
    it has none). Anthropic guarantees a tool's input matches its schema only for ``strict: true`` tools; for the
    others the grammar enforces what it can (types, properties, required, enums, bounds within its limits) rather
    than refusing the request. A schema that cannot be made checkable reads as any object."""
    try:
        grammar.check_schema(schema, "$")
        return schema
    except InvalidRequest:
        pass
    copy = json.loads(json.dumps(schema))
    for _ in range(MAX_RELAXED):
        try:
            grammar.check_schema(copy, "$")
            return copy
        except InvalidRequest as e:
            if not _drop(copy, e.param or ""):
                break
    return {"type": "object"}


def _drop(schema: dict, path: str) -> bool:
    """Remove the keyword at ``path`` ("$.properties.x.maxItems", "$.anyOf[0].format"); False when it is not
    found (a property name with a dot in it, say) or is the root."""
    steps: list = []
    for part in path.split(".")[1:]:
        name, _, rest = part.partition("[")
        steps.append(name)
        steps += [int(i) for i in rest.replace("]", "").split("[") if i.isdigit()] if rest else []
    node = schema
    for step in steps[:-1]:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return False
    if not steps or not isinstance(node, dict) or steps[-1] not in node:
        return False
    del node[steps[-1]]
    return True


def _choice(value) -> tuple[object, bool | None]:
    """Anthropic's tool_choice as OpenAI's (tool_choice, parallel_tool_calls)."""
    if value is None:
        return None, None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in ("auto", "any", "tool", "none"):
        raise InvalidRequest("'tool_choice.type' must be 'auto', 'any', 'tool' or 'none'", param="tool_choice.type")
    disable = value.get("disable_parallel_tool_use")
    if disable is not None and not isinstance(disable, bool):
        raise InvalidRequest("'tool_choice.disable_parallel_tool_use' must be a boolean",
                             param="tool_choice.disable_parallel_tool_use")
    if kind == "tool":
        name = value.get("name")
        if not isinstance(name, str):
            raise InvalidRequest("'tool_choice.name' must name a tool", param="tool_choice.name")
        return {"type": "function", "function": {"name": name}}, None if disable is None else not disable
    return {"any": "required"}.get(kind, kind), None if disable is None else not disable


TOOL_CHOICE = Shape({"type": "object", "required": ["type"], "properties": {
    "type": {"enum": ["auto", "any", "tool", "none"]}, "name": TEXT, "disable_parallel_tool_use": {"type": "boolean"}}})


class Thinking(Check):
    """``thinking``: ``disabled`` turns a thinking template's switch off, ``enabled`` / ``adaptive`` on
    (``budget_tokens`` is read as part of max_tokens, as Anthropic counts it)."""

    def __call__(self, value, where, site):
        if value is None:
            return None
        kind = value.get("type") if isinstance(value, dict) else None
        if kind not in ("enabled", "disabled", "adaptive"):
            raise InvalidRequest(f"'{where}.type' must be 'enabled', 'disabled' or 'adaptive'", param=f"{where}.type")
        budget = value.get("budget_tokens")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
            raise InvalidRequest(f"'{where}.budget_tokens' must be a non-negative integer",
                                 param=f"{where}.budget_tokens")
        return kind != "disabled"

    def schema(self, settings):
        return {"type": "object", "required": ["type"], "properties": {
            "type": {"enum": ["enabled", "disabled", "adaptive"]}, "budget_tokens": {"type": "integer"}}}


EFFORTS = ("low", "medium", "high", "max")


class OutputConfig(Check):
    """``output_config``: ``format`` (``json_schema``) is enforced by the grammar as chat's response_format is;
    ``effort`` is accepted with no effect (the models here spend what the answer takes)."""

    def __call__(self, value, where, site):
        if value is None:
            return None
        if not isinstance(value, dict):
            raise InvalidRequest(f"'{where}' must be an object", param=where)
        for key in value:
            if key not in ("effort", "format"):
                raise InvalidRequest(f"'{where}.{quote(str(key))}' is not supported", param=f"{where}.{key}")
        if value.get("effort") is not None and value["effort"] not in EFFORTS:
            raise InvalidRequest(f"'{where}.effort' must be one of {', '.join(EFFORTS)}", param=f"{where}.effort")
        fmt = value.get("format")
        if fmt is None:
            return None
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
            raise InvalidRequest(f"'{where}.format' must be {{type: 'json_schema', schema: {{...}}}}",
                                 param=f"{where}.format")
        return ResponseFormat("json_schema", fmt["schema"], "output", True)

    def schema(self, settings):
        return {"type": "object", "properties": {"effort": {"enum": list(EFFORTS)}, "format": {
            "type": "object", "required": ["type", "schema"],
            "properties": {"type": {"const": "json_schema"}, "schema": {"type": "object"}}}}}


