"""Reading a JSON request body under limits: content type (415), size (413, checked while it streams in, so a
huge or endless chunked body is refused before it is buffered), JSON syntax, NaN/Infinity, and nesting depth."""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import replace

from starlette.requests import Request

from ..errors import InvalidRequest, PayloadTooLarge, RequestTimeout, UnsupportedMediaType, quote_path
from ..request import RequestContext
from ..settings import Settings

JSON_TYPES = ("application/json",)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


async def read_json(request: Request, settings: Settings) -> dict:
    """The body as a JSON object. Raises UnsupportedMediaType, PayloadTooLarge, RequestTimeout or InvalidRequest.

    The whole body must arrive within ``settings.body_timeout`` seconds, so a client trickling it in (slowloris)
    cannot hold a connection and its buffer forever.
    """
    max_bytes, max_depth, timeout = settings.max_body_bytes, settings.max_json_depth, settings.body_timeout
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in JSON_TYPES:
        raise UnsupportedMediaType("Content-Type must be application/json")
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > max_bytes:
                raise PayloadTooLarge(f"request body is larger than {max_bytes} bytes")
        except ValueError:
            raise InvalidRequest("invalid Content-Length") from None
    data = bytearray()
    deadline = time.monotonic() + timeout
    stream = request.stream().__aiter__()
    while True:
        try:
            part = await asyncio.wait_for(anext(stream), max(0.0, deadline - time.monotonic()))
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise RequestTimeout(f"the request body did not arrive within {timeout:g} s") from None
        data += part
        if len(data) > max_bytes:
            raise PayloadTooLarge(f"request body is larger than {max_bytes} bytes")
    try:
        body = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise InvalidRequest("We could not parse the JSON body of your request") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    if _depth(body) > max_depth:
        raise InvalidRequest(f"the JSON body is nested deeper than {max_depth} levels")
    bad = unencodable(body)
    if bad is not None:
        raise InvalidRequest(f"'{quote_path(bad)}' is not valid Unicode text (it holds a lone surrogate escape such as "
                             "\\ud800)", param=bad)
    bad = non_finite(body)
    if bad is not None:  # 1e400 parses as infinity, which no JSON writer (a schema's enum, the ledger) can spell
        raise InvalidRequest(f"'{bad}' holds a number too large to represent", param=bad)
    return body


def keep_body(request: Request, body: dict) -> RequestContext:
    """The request's context, holding its body when the server stores bodies (``--log-bodies``)."""
    ctx: RequestContext = request.state.ctx
    if request.state.service.settings.log_bodies:
        ctx = replace(ctx, body=json.dumps(body, ensure_ascii=False)[:100_000])
    return ctx


def non_finite(value) -> str | None:
    """The param path of the first number that is not finite (``1e400``, ``-1e999``), or None."""
    stack = [(value, "")]
    while stack:
        v, at = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return at or "body"
        if isinstance(v, dict):
            stack.extend((x, f"{at}.{k[:64]}" if at else k[:64]) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((x, f"{at}[{i}]") for i, x in enumerate(v))
    return None


def unencodable(value, where: str = "") -> str | None:
    """The param path of the first string (or object key) that cannot be encoded as UTF-8, or None.

    JSON's \\uXXXX escapes can spell lone UTF-16 surrogates, which Python keeps in a str but no UTF-8 writer
    (the tokenizer, the ledger, a log line) accepts: one rule at the edge, before anything else runs.
    """
    stack = [(value, where)]
    while stack:
        v, at = stack.pop()
        if isinstance(v, str):
            if not _utf8(v):
                return at or "body"
        elif isinstance(v, dict):
            for k, x in v.items():
                key = f"{at}.{k[:64]}" if at else k[:64]   # a path fit for an error body, however long the key
                if not _utf8(k):
                    return (at + "." if at else "") + "<key>"
                stack.append((x, key))
        elif isinstance(v, list):
            stack.extend((x, f"{at}[{i}]") for i, x in enumerate(v))
    return None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _depth(value, limit: int = 1000) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if d > limit:
            break
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest
