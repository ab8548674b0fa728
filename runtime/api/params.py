"""Checking wire values shared by both dialects: messages and sampling options.

Each check names the offending ``param`` and rejects wrong types (a bool is not a number), NaN, infinities and
out-of-range values with InvalidRequest, before anything reaches the engine.
"""

from __future__ import annotations

import math
import re

from ..settings import Settings
from ..errors import InvalidRequest
from ..types import Message, SamplingParams, ToolCall

ROLES = {"system", "user", "assistant", "developer", "tool"}
MAX_TOOL_CALLS = 128      # per assistant message
MAX_ID_CHARS = 256        # tool_call ids, names


def messages(value, settings: Settings, param: str = "messages") -> list[Message]:
    """The conversation. Assistant messages may carry ``tool_calls`` (content then may be null); ``tool`` messages
    answer one by ``tool_call_id``. Raises InvalidRequest naming the exact field."""
    if not isinstance(value, list) or not value:
        raise InvalidRequest(f"'{param}' must be a non-empty array", param=param)
    if len(value) > settings.max_messages:
        raise InvalidRequest(f"'{param}' has more than {settings.max_messages} messages", param=param)
    out = []
    for i, m in enumerate(value):
        where = f"{param}[{i}]"
        if not isinstance(m, dict):
            raise InvalidRequest(f"'{where}' must be an object", param=where)
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidRequest(f"'{where}.role' must be one of {', '.join(sorted(ROLES))}", param=f"{where}.role")
        for field in ("audio", "function_call"):  # assistant audio references and the deprecated function call
            if m.get(field) is not None:
                raise InvalidRequest(f"'{where}.{field}' is not supported", param=f"{where}.{field}")
        calls = _tool_calls(m.get("tool_calls"), f"{where}.tool_calls", role, settings)
        content = _content(m.get("content"), f"{where}.content", role)
        if len(content) + sum(len(c.arguments) for c in calls) > settings.max_message_chars:
            raise InvalidRequest(f"'{where}.content' is longer than {settings.max_message_chars} characters",
                                 param=f"{where}.content")
        call_id = _short_text(m, "tool_call_id", where, required=role == "tool") if role == "tool" else None
        name = _short_text(m, "name", where)
        out.append(Message("system" if role == "developer" else role, content, calls, call_id, name))
    return out


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


def _content(value, where: str, role: str) -> str:
    if isinstance(value, str):
        text = value
    elif value is None and role == "assistant":
        text = ""
    elif isinstance(value, list):  # OpenAI content parts: only text parts can be served by a text model
        parts = []
        for j, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequest(f"'{where}[{j}]' must be a text part", param=f"{where}[{j}]")
            parts.append(part["text"])
        text = "".join(parts)
    else:
        raise InvalidRequest(f"'{where}' must be a string", param=where)
    return text


def number(body: dict, name: str, lo: float, hi: float, default, *, param: str | None = None):
    value = body.get(name)
    if value is None:
        return default
    p = param or name
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(f"'{p}' must be a number", param=p)
    if not lo <= value <= hi:
        raise InvalidRequest(f"'{p}' must be between {lo} and {hi}", param=p)
    return float(value)


def integer(body: dict, name: str, lo: int, hi: int, default, *, param: str | None = None):
    value = body.get(name)
    if value is None:
        return default
    p = param or name
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer() and math.isfinite(value):
            value = int(value)
        else:
            raise InvalidRequest(f"'{p}' must be an integer", param=p)
    if not lo <= value <= hi:
        raise InvalidRequest(f"'{p}' must be between {lo} and {hi}", param=p)
    return value


def boolean(body: dict, name: str, default: bool, *, param: str | None = None) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{param or name}' must be a boolean", param=param or name)
    return value


def stop(body: dict, prefix: str = "") -> tuple[str, ...]:
    value = body.get("stop")
    p = prefix + "stop"
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if (not isinstance(value, list) or len(value) > MAX_STOP
            or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in value)):
        raise InvalidRequest(f"'{p}' must be a string or an array of up to {MAX_STOP} non-empty strings of at most "
                             f"{MAX_STOP_CHARS} characters", param=p)
    return tuple(value)


def logit_bias(body: dict, prefix: str = "") -> tuple[tuple[int, float], ...]:
    """OpenAI's ``logit_bias``: {"token id": bias in [-100, 100]}; -100 bans the token."""
    value = body.get("logit_bias")
    p = prefix + "logit_bias"
    if value is None:
        return ()
    if not isinstance(value, dict) or len(value) > MAX_LOGIT_BIAS:
        raise InvalidRequest(f"'{p}' must be an object of at most {MAX_LOGIT_BIAS} token ids", param=p)
    out = []
    for k, v in value.items():
        if not (isinstance(k, str) and k.isascii() and k.isdigit() and len(k) < 10):
            raise InvalidRequest(f"'{p}' keys must be token ids", param=p)
        lo, hi = LOGIT_BIAS_RANGE
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
            raise InvalidRequest(f"'{p}' values must be numbers between -100 and 100", param=p)
        out.append((int(k), float(v)))
    return tuple(out)


# The wire limits of the sampling fields: the validators below and the OpenAPI document (openapi.py) both
# read this table. (name, kind, low, high, default); max_tokens' high is the --max-tokens-cap setting.
SAMPLING_FIELDS: tuple[tuple[str, str, float, float, object], ...] = (
    ("temperature", "number", 0.0, 2.0, 1.0),
    ("top_p", "number", 0.0, 1.0, 1.0),
    ("top_k", "integer", 0, 1_000_000, 0),
    ("min_p", "number", 0.0, 1.0, 0.0),
    ("seed", "integer", -(2 ** 63), 2 ** 64 - 1, None),
    ("presence_penalty", "number", -2.0, 2.0, 0.0),
    ("frequency_penalty", "number", -2.0, 2.0, 0.0),
)
MAX_STOP, MAX_STOP_CHARS = 4, 256
MAX_LOGIT_BIAS, LOGIT_BIAS_RANGE = 1024, (-100.0, 100.0)


KEEP_ALIVE_RE = re.compile(r"^(-?\d+(?:\.\d+)?)(ms|s|m|h)?$")
KEEP_ALIVE_MAX = 30 * 86400.0
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def keep_alive(body: dict) -> float | None:
    """Ollama's ``keep_alive``: seconds as a number, or a duration ("10m", "1h", "30s"); 0 unloads the model right
    after the request, a negative value keeps it loaded. None when not given."""
    value = body.get("keep_alive")
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and KEEP_ALIVE_RE.match(value.strip()):
        number, unit = KEEP_ALIVE_RE.match(value.strip()).groups()
        seconds = float(number) * _UNIT[unit]
    else:
        raise InvalidRequest("'keep_alive' must be seconds or a duration such as \"10m\" (negative: keep loaded)",
                             param="keep_alive")
    if seconds != seconds or seconds > KEEP_ALIVE_MAX:
        raise InvalidRequest(f"'keep_alive' must be at most {KEEP_ALIVE_MAX:.0f} seconds (negative: keep loaded)",
                             param="keep_alive")
    return -1.0 if seconds < 0 else seconds


def model(body: dict) -> str:
    value = body.get("model")
    if not isinstance(value, str) or not value:
        raise InvalidRequest("'model' must be a non-empty string", param="model")
    return value


def sampling(body: dict, settings: Settings, prefix: str = "") -> SamplingParams:
    """SamplingParams, ``max_tokens`` None when not given (up to the end of the context)."""
    max_tokens = integer(body, "max_completion_tokens", 1, settings.max_tokens_cap, None,
                         param=prefix + "max_completion_tokens")
    if max_tokens is None:
        max_tokens = integer(body, "max_tokens", 1, settings.max_tokens_cap, None, param=prefix + "max_tokens")
    values = {}
    for name, kind, lo, hi, default in SAMPLING_FIELDS:
        check = number if kind == "number" else integer
        values[name] = check(body, name, lo, hi, default, param=prefix + name)
    return SamplingParams(max_tokens=max_tokens, stop=stop(body, prefix), logit_bias=logit_bias(body, prefix),
                          **values)
