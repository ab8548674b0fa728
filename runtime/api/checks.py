"""The checks a request field's value can have: each turns a wire value into the value the Ask holds, or raises
InvalidRequest naming the exact ``param``, and emits the JSON Schema of what it accepts (so the OpenAPI document
is generated from the same objects that enforce it). The table of fields that uses them is ``wire.py``.

A check is called with the value (None when absent), where it sits on the wire (``options.temperature``) and a
``Site``: the server's settings and the object the field was read from (a few checks read a sibling, e.g. tools
reads ``tool_choice``). Wrong types (a bool is not a number), NaN, infinities and out-of-range values are refused
before anything reaches a backend.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

from .. import grammar
from ..errors import InvalidRequest
from ..grammar.tools import MAX_TOOLS
from ..settings import Settings
from ..types import ResponseFormat

MAX_ID_CHARS = 256        # tool_call ids, names, user
MAX_STOP, MAX_STOP_CHARS = 4, 256
MAX_LOGIT_BIAS, LOGIT_BIAS_RANGE = 1024, (-100.0, 100.0)
MAX_METADATA, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
NAME_PATTERN = "^[a-zA-Z0-9_-]{1,64}$"
_NAME = re.compile(NAME_PATTERN)


@dataclass(frozen=True)
class Site:
    settings: Settings
    source: dict            # the object the field was read from (the body, or the gateway's options)


Bound = int | float | Callable[[Settings], int]   # a limit, or the setting that sets it


def _bound(b: Bound, settings: Settings):
    return b(settings) if callable(b) else b


class Check:
    """Accept everything (a field read only by another field's check, or passed on unchanged)."""

    required = False        # absent is refused (and the schema lists it as required)
    always = False          # called even when absent (it reads siblings that may be present)

    def __call__(self, value, where: str, site: Site):
        return value

    def schema(self, settings: Settings) -> dict:
        return {}


@dataclass(frozen=True)
class Number(Check):
    lo: float
    hi: float

    def __call__(self, value, where, site):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidRequest(f"'{where}' must be a number", param=where)
        if not self.lo <= value <= self.hi:
            raise InvalidRequest(f"'{where}' must be between {self.lo} and {self.hi}", param=where)
        return float(value)

    def schema(self, settings):
        return {"type": "number", "minimum": self.lo, "maximum": self.hi}


@dataclass(frozen=True)
class Integer(Check):
    """An integer in [lo, hi] (a float with an integral value counts); ``hi`` may be a setting."""
    lo: int
    hi: Bound

    def __call__(self, value, where, site):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer() and math.isfinite(value):
                value = int(value)
            else:
                raise InvalidRequest(f"'{where}' must be an integer", param=where)
        hi = _bound(self.hi, site.settings)
        if not self.lo <= value <= hi:
            raise InvalidRequest(f"'{where}' must be between {self.lo} and {hi}", param=where)
        return value

    def schema(self, settings):
        return {"type": "integer", "minimum": self.lo, "maximum": _bound(self.hi, settings)}


class Boolean(Check):
    def __call__(self, value, where, site):
        if value is not None and not isinstance(value, bool):
            raise InvalidRequest(f"'{where}' must be a boolean", param=where)
        return value

    def schema(self, settings):
        return {"type": "boolean"}


@dataclass(frozen=True)
class Text(Check):
    """A string of at most ``most`` characters (ids, ``user``)."""
    most: Bound = MAX_ID_CHARS

    def __call__(self, value, where, site):
        most = _bound(self.most, site.settings)
        if value is not None and (not isinstance(value, str) or len(value) > most):
            raise InvalidRequest(f"'{where}' must be a string of at most {most} characters", param=where)
        return value

    def schema(self, settings):
        return {"type": "string", "maxLength": _bound(self.most, settings)}


class Model(Check):
    required = True

    def __call__(self, value, where, site):
        if not isinstance(value, str) or not value:
            raise InvalidRequest(f"'{where}' must be a non-empty string", param=where)
        return value

    def schema(self, settings):
        return {"type": "string"}


class KeepAlive(Check):
    """Ollama's ``keep_alive``: seconds as a number, or a duration ("10m", "1h", "30s"); 0 unloads the model right
    after the request, a negative value keeps it loaded (-1.0)."""
    MOST = 30 * 86400.0
    PATTERN = re.compile(r"^(-?\d+(?:\.\d+)?)(ms|s|m|h)?$")
    UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

    def __call__(self, value, where, site):
        if value is None:
            return None
        match = self.PATTERN.match(value.strip()) if isinstance(value, str) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        elif match:
            number, unit = match.groups()
            seconds = float(number) * self.UNIT[unit]
        else:
            raise InvalidRequest(f"'{where}' must be seconds or a duration such as \"10m\" (negative: keep loaded)",
                                 param=where)
        if seconds != seconds or seconds > self.MOST:
            raise InvalidRequest(f"'{where}' must be at most {self.MOST:.0f} seconds (negative: keep loaded)",
                                 param=where)
        return -1.0 if seconds < 0 else seconds

    def schema(self, settings):
        return {"oneOf": [{"type": "number", "maximum": self.MOST},
                          {"type": "string", "pattern": self.PATTERN.pattern}]}


@dataclass(frozen=True)
class OneOf(Check):
    """One of a few strings; a false value (absent, "", null) means the first."""
    values: tuple[str, ...]

    def __call__(self, value, where, site):
        value = value or self.values[0]
        if value not in self.values:
            options = " or ".join(f"'{v}'" for v in self.values)
            raise InvalidRequest(f"'{where}' must be {options}", param=where)
        return value

    def schema(self, settings):
        return {"enum": list(self.values)}


class ReasoningEffort(Check):
    """OpenAI's reasoning effort as a thinking template's switch (``Ask.thinking``): ``none`` and ``minimal`` turn
    thinking off, every other effort leaves it on (docs/reasoning.md)."""
    values = ("none", "minimal", "low", "medium", "high", "xhigh")

    def __call__(self, value, where, site):
        if value not in self.values:
            options = ", ".join(f"'{v}'" for v in self.values)
            raise InvalidRequest(f"'{where}' must be one of {options}", param=where)
        return value not in ("none", "minimal")

    def schema(self, settings):
        return {"enum": list(self.values)}


@dataclass(frozen=True)
class Shape(Check):
    """Accepted with any value here; ``document`` is the JSON Schema the OpenAPI document states for it (a field
    another field's check reads, such as ``tool_choice``, or one the values of which are listed in the table)."""
    document: dict

    def schema(self, settings):
        return self.document


class Metadata(Check):
    def __call__(self, value, where, site):
        if value is not None and not (
                isinstance(value, dict) and len(value) <= MAX_METADATA
                and all(isinstance(k, str) and len(k) <= MAX_METADATA_KEY and isinstance(v, str)
                        and len(v) <= MAX_METADATA_VALUE for k, v in value.items())):
            raise InvalidRequest(f"'{where}' must be an object of at most {MAX_METADATA} string values", param=where)
        return value

    def schema(self, settings):
        return {"type": "object", "maxProperties": MAX_METADATA, "additionalProperties": {"type": "string"}}


class Stop(Check):
    def __call__(self, value, where, site):
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if (not isinstance(value, list) or len(value) > MAX_STOP
                or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in value)):
            raise InvalidRequest(f"'{where}' must be a string or an array of up to {MAX_STOP} non-empty strings of "
                                 f"at most {MAX_STOP_CHARS} characters", param=where)
        return tuple(value)

    def schema(self, settings):
        text = {"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS}
        return {"oneOf": [text, {"type": "array", "maxItems": MAX_STOP, "items": text}]}


class LogitBias(Check):
    """OpenAI's ``logit_bias``: {"token id": bias in [-100, 100]}; -100 bans the token."""

    def __call__(self, value, where, site):
        if value is None:
            return ()
        if not isinstance(value, dict) or len(value) > MAX_LOGIT_BIAS:
            raise InvalidRequest(f"'{where}' must be an object of at most {MAX_LOGIT_BIAS} token ids", param=where)
        out = []
        lo, hi = LOGIT_BIAS_RANGE
        for k, v in value.items():
            if not (isinstance(k, str) and k.isascii() and k.isdigit() and len(k) < 10):
                raise InvalidRequest(f"'{where}' keys must be token ids", param=where)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
                raise InvalidRequest(f"'{where}' values must be numbers between -100 and 100", param=where)
            out.append((int(k), float(v)))
        return tuple(out)

    def schema(self, settings):
        return {"type": "object", "maxProperties": MAX_LOGIT_BIAS, "additionalProperties": {
            "type": "number", "minimum": LOGIT_BIAS_RANGE[0], "maximum": LOGIT_BIAS_RANGE[1]}}


@dataclass(frozen=True)
class StreamOptions(Check):
    """``stream_options``: the value is ``include_usage``; ``include_obfuscation`` is checked where the dialect
    has it (no padding is ever added)."""
    obfuscation: bool = True

    def __call__(self, value, where, site):
        if value is None:
            return None
        if not isinstance(value, dict):
            raise InvalidRequest(f"'{where}' must be an object", param=where)
        usage = Boolean()(value.get("include_usage"), f"{where}.include_usage", site)
        if self.obfuscation:
            Boolean()(value.get("include_obfuscation"), f"{where}.include_obfuscation", site)
        return usage

    def schema(self, settings):
        keys = ("include_usage", "include_obfuscation") if self.obfuscation else ("include_usage",)
        return {"type": "object", "properties": {k: {"type": "boolean"} for k in keys}}


@dataclass(frozen=True)
class Texts(Check):
    """Raw texts: a string or an array of 1 to ``most`` strings (token arrays are refused: they could spell
    control tokens); ``most`` may be a setting. ``nonempty`` refuses an empty string."""
    most: Bound
    nonempty: bool = False
    required = True

    def __call__(self, value, where, site):
        limit = site.settings.max_message_chars
        most = _bound(self.most, site.settings)
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or len(items) > most:
            raise InvalidRequest(f"'{where}' must be a string or an array of 1 to {most} strings", param=where)
        for i, text in enumerate(items):
            at = where if isinstance(value, str) else f"{where}[{i}]"
            if not isinstance(text, str) or (self.nonempty and not text):
                kind = "a non-empty string" if self.nonempty else "a string"
                raise InvalidRequest(f"'{at}' must be {kind} (token arrays are not supported)", param=at)
            if len(text) > limit:
                raise InvalidRequest(f"'{at}' must be valid text of at most {limit} characters", param=at)
        return tuple(items)

    def schema(self, settings):
        text = {"type": "string", "minLength": 1, "maxLength": settings.max_message_chars}
        return {"oneOf": [text, {"type": "array", "minItems": 1, "maxItems": _bound(self.most, settings),
                                 "items": text}]}


class Prediction(Check):
    """OpenAI's Predicted Outputs: ``{"type": "content", "content": a string or text parts}`` -> the text."""

    def __call__(self, value, where, site):
        if value is None:
            return None
        if not isinstance(value, dict) or value.get("type") != "content" or not set(value) <= {"type", "content"}:
            raise InvalidRequest(f"'{where}' must be an object {{\"type\": \"content\", \"content\": ...}}",
                                 param=where)
        content = value.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                             and set(p) <= {"type", "text"} and isinstance(p.get("text"), str)
                                             for p in content):
            return "".join(p["text"] for p in content)
        raise InvalidRequest(f"'{where}.content' must be a string or an array of text parts", param=f"{where}.content")

    def schema(self, settings):
        part = {"type": "object", "properties": {"type": {"enum": ["text"]}, "text": {"type": "string"}},
                "required": ["type", "text"], "additionalProperties": False}
        return {"type": "object", "properties": {
            "type": {"enum": ["content"]},
            "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": part}]}},
            "required": ["type", "content"], "additionalProperties": False}


class ResponseFormatCheck(Check):
    """``response_format`` into a typed value, checked once here; None for text. The grammar package checks the
    schema's keywords and refuses what it cannot enforce, naming the keyword."""

    def __call__(self, rf, p, site):
        if rf is None:
            return None
        if not isinstance(rf, dict):
            raise InvalidRequest(f"'{p}' must be an object", param=p)
        kind = rf.get("type")
        if kind == "text":
            return None
        if kind == "json_object":
            return ResponseFormat("json_object")
        if kind != "json_schema":
            raise InvalidRequest(f"'{p}.type' must be 'text', 'json_object' or 'json_schema'", param=f"{p}.type")
        js = rf.get("json_schema")
        if not isinstance(js, dict):
            raise InvalidRequest(f"'{p}.json_schema' must be an object", param=f"{p}.json_schema")
        if not isinstance(js.get("name"), str) or not _NAME.match(js["name"]):
            raise InvalidRequest(f"'{p}.json_schema.name' must match {NAME_PATTERN}", param=f"{p}.json_schema.name")
        if js.get("strict") is not None and not isinstance(js["strict"], bool):
            raise InvalidRequest(f"'{p}.json_schema.strict' must be a boolean", param=f"{p}.json_schema.strict")
        if js.get("description") is not None and not isinstance(js["description"], str):
            raise InvalidRequest(f"'{p}.json_schema.description' must be a string",
                                 param=f"{p}.json_schema.description")
        if "schema" in js and not isinstance(js["schema"], dict):
            raise InvalidRequest(f"'{p}.json_schema.schema' must be a JSON Schema object",
                                 param=f"{p}.json_schema.schema")
        return ResponseFormat("json_schema", js.get("schema"), js["name"], bool(js.get("strict")))

    def schema(self, settings):
        name = {"type": "string", "pattern": NAME_PATTERN}
        return {"oneOf": [
            {"type": "object", "required": ["type"], "properties": {"type": {"enum": ["text", "json_object"]}}},
            {"type": "object", "required": ["type", "json_schema"], "properties": {
                "type": {"const": "json_schema"},
                "json_schema": {"type": "object", "required": ["name"], "properties": {
                    "name": name, "strict": {"type": "boolean"}, "description": {"type": "string"},
                    "schema": _SCHEMA}}}}]}


_SCHEMA = {"type": "object", "description": "a JSON Schema (docs/api-fields.md lists the keywords enforced)"}
_FUNCTION_NAME = {"type": "string", "pattern": NAME_PATTERN}


class ToolsCheck(Check):
    """``tools`` with its siblings ``tool_choice`` and ``parallel_tool_calls`` (read from the same object);
    None when there are no tools. Called when ``tools`` is absent too: ``tool_choice: "required"`` without
    tools is refused."""

    always = True

    def __call__(self, value, where, site):
        prefix = where[:-len("tools")]
        return grammar.parse_tools(value, site.source.get("tool_choice"), site.source.get("parallel_tool_calls"),
                                   prefix=prefix)

    def schema(self, settings):
        tool = {"type": "object", "required": ["type", "function"],
                "properties": {"type": {"const": "function"},
                               "function": {"type": "object", "required": ["name"],
                                            "properties": {"name": _FUNCTION_NAME, "description": {"type": "string"},
                                                           "parameters": _SCHEMA, "strict": {"type": "boolean"}}}}}
        return {"type": "array", "maxItems": MAX_TOOLS, "items": tool}


TOOL_CHOICE = Shape({"oneOf": [{"enum": ["none", "auto", "required"]}, {
    "type": "object", "required": ["type", "function"], "properties": {
        "type": {"const": "function"},
        "function": {"type": "object", "required": ["name"], "properties": {"name": _FUNCTION_NAME}}}}]})
PARALLEL_TOOL_CALLS = Shape({"type": "boolean"})


class AnObject(Check):
    """Any JSON object (accepted with no effect; the row's doc says why)."""

    def __call__(self, value, where, site):
        if value is not None and not isinstance(value, dict):
            raise InvalidRequest(f"'{where}' must be an object", param=where)
        return value

    def schema(self, settings):
        return {"type": "object"}
