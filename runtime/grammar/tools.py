"""OpenAI ``tools`` / ``tool_choice`` / ``parallel_tool_calls`` -> validated Tools and grammar.

Wire format (native Hermes/Qwen2.5 templates and our fallback alike), one block per call:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>
"""
import json
import re

from ..errors import InvalidRequest, quote
from ..types import ResponseFormat, Tool, Tools
from .jsonschema_gbnf import GrammarBuilder, literal
from .response_format import GrammarSpec, add_schema, finish, schema_rule
from .schema_check import families

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MAX_TOOLS = 128
_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# Between tags and JSON (a GBNF class and a Python regex alike): any of these four characters, bounded so a tiny
# model cannot loop on newlines. The grammar, the lazy trigger and the parser all use it, so they agree on which
# openings start a call: a tab, CRLF, three newlines or two spaces do; a fifth character does not.
TC_WS = "[ \\t\\r\\n]{0,4}"
# The opening of a call, up to the name's first quote, in pieces: the trigger fires (and the parser starts a call)
# only when what follows "<tool_call>" is a prefix of it, so the grammar takes over from a text it accepts.
_AFTER_OPEN = [TC_WS, "\\{", " ?", '"', "n", "a", "m", "e", '"', ":", " ?", '"']


def prefix_pattern(pieces: list[str]) -> str:
    """A regex matching every prefix (the empty one included) of what ``pieces`` spell in a row."""
    tail = ""
    for piece in reversed(pieces):
        tail = piece + (f"(?:{tail})?" if tail else "")
    return f"(?:{tail})?"


OPENING_PREFIX = prefix_pattern(_AFTER_OPEN)
OPENING = "".join(_AFTER_OPEN)
# Searched in the text written so far (Python re): a whole opening anywhere (one token may write it and more), or
# the start of one at the very end.
TRIGGER_PATTERN = f"<tool_call>(?:{OPENING}|{OPENING_PREFIX}\\Z)"


def parse_tools(tools, tool_choice=None, parallel_tool_calls=None, prefix: str = "") -> Tools | None:
    """Validate the three request fields (``prefix`` + their names on the wire); None when there are no tools.
    Raises InvalidRequest naming the bad field."""
    try:
        plan = _parse(tools, tool_choice, parallel_tool_calls)
    except InvalidRequest as e:
        e.param = prefix + e.param if e.param else e.param
        raise
    return plan if plan.tools else None


def _parse(tools, tool_choice, parallel_tool_calls) -> Tools:
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise InvalidRequest("'parallel_tool_calls' must be a boolean", param="parallel_tool_calls")
    parsed = []
    if tools is not None:
        if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
            raise InvalidRequest(f"'tools' must be an array of at most {MAX_TOOLS} tools", param="tools")
        for i, tool in enumerate(tools):
            parsed.append(_parse_tool(tool, f"tools[{i}]"))
        names = [t.name for t in parsed]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise InvalidRequest(f"duplicate function name '{quote(dup)}'", param="tools")
    forced = None
    if tool_choice is None:
        choice = "auto" if parsed else "none"
    elif tool_choice in ("none", "auto", "required"):
        choice = tool_choice
    elif isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        fn = tool_choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or name not in {t.name for t in parsed}:   # a list or an object is no name
            raise InvalidRequest(f"tool_choice names unknown function '{quote(name)}'",
                                 param="tool_choice.function.name")
        choice, forced = "required", name
    else:
        raise InvalidRequest("'tool_choice' must be 'none', 'auto', 'required' or "
                           "{'type': 'function', 'function': {'name': ...}}", param="tool_choice")
    if choice != "none" and not parsed:
        raise InvalidRequest("'tool_choice' requires 'tools'", param="tool_choice")
    return Tools(tuple(parsed), choice, forced, True if parallel_tool_calls is None else parallel_tool_calls)


def _parse_tool(tool, path) -> Tool:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise InvalidRequest("only tools of type 'function' are supported", param=f"{path}.type")
    fn = tool.get("function")
    if not isinstance(fn, dict):
        raise InvalidRequest("'function' must be an object", param=f"{path}.function")
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidRequest("function name must match ^[a-zA-Z0-9_-]{1,64}$", param=f"{path}.function.name")
    desc = fn.get("description", "")
    if not isinstance(desc, str):
        raise InvalidRequest("'description' must be a string", param=f"{path}.function.description")
    if not isinstance(fn.get("strict", False), (bool, type(None))):
        raise InvalidRequest("'strict' must be a boolean", param=f"{path}.function.strict")
    params = fn.get("parameters")
    if params is not None:
        ppath = f"{path}.function.parameters"
        if not isinstance(params, dict) or any(k in params for k in ("$ref", "anyOf", "oneOf", "allOf")) \
                or families(params) != ["object"]:
            raise InvalidRequest("'parameters' must be a JSON Schema with type 'object'", param=ppath)
    return Tool(name, desc, params)


def _calls_rule(b: GrammarBuilder, plan: Tools) -> str:
    """Rule for one or more (if parallel) <tool_call> blocks of the allowed functions."""
    sp = b.prim("ws")   # the call's own JSON, as the model opens it (the trigger allows a space); arguments: canonical
    alts = []
    for i, t in enumerate(plan.allowed):
        ppath = f"tools[{plan.tools.index(t)}].function.parameters"
        args = add_schema(b, t.parameters, ppath, f"fn{i}-args") if t.parameters is not None \
            else b.add("empty-object", '"{" "}"')
        alts.append(b.add(f"fn{i}-call", f'{literal(json.dumps(t.name))} "," {sp} "\\"arguments\\":" {sp} {args}'))
    tcws = b.add("tc-ws", TC_WS)
    call = b.add("tool-call", f'{literal(OPEN)} {tcws} "{{" {sp} "\\"name\\":" {sp} ({" | ".join(alts)}) '
                              f'{sp} "}}" {tcws} {literal(CLOSE)}')
    # A named function is called once (as OpenAI answers a forced tool_choice); otherwise as parallel_tool_calls says.
    parallel = plan.parallel and plan.forced is None
    return b.add("tool-calls", f"{call} ({tcws} {call})* {tcws}" if parallel else f"{call} {tcws}")


def tool_grammar(plan: Tools, response_format: ResponseFormat | None = None) -> GrammarSpec | None:
    """Grammar for a request with tools.

    none: the response_format grammar (or None). required/named: the reply is only tool calls.
    auto: lazy grammar triggered by TRIGGER_PATTERN (free text before the first call); with a JSON
    response_format the reply is instead, eagerly, either tool calls or the JSON value.
    """
    b = GrammarBuilder()
    if plan.choice == "none":
        rule = schema_rule(b, response_format)
        return None if rule is None else finish(b, rule, "response_format")
    calls = _calls_rule(b, plan)
    if plan.choice == "required":
        return finish(b, calls, "tools")
    rule = schema_rule(b, response_format)
    if rule is not None:
        return finish(b, f"{calls} | {rule}", "response_format")
    return finish(b, calls, "tools", lazy=True, trigger_patterns=(TRIGGER_PATTERN,))
