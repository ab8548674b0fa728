"""Checking wire values shared by both dialects: messages and sampling options.

Each check names the offending ``param`` and rejects wrong types (a bool is not a number), NaN, infinities and
out-of-range values with InvalidRequest, before anything reaches the engine.
"""

from __future__ import annotations

import math

from ..settings import Settings
from ..errors import InvalidRequest
from ..types import Message, SamplingParams

ROLES = {"system", "user", "assistant", "developer"}


def messages(value, settings: Settings, param: str = "messages") -> list[Message]:
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
            raise InvalidRequest(f"'{where}.role' must be one of system, user, assistant", param=f"{where}.role")
        content = _content(m.get("content"), f"{where}.content", role)
        if len(content) > settings.max_message_chars:
            raise InvalidRequest(f"'{where}.content' is longer than {settings.max_message_chars} characters",
                                 param=f"{where}.content")
        out.append(Message("system" if role == "developer" else role, content))
    return out


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
