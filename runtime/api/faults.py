"""Test-only faults and the request journal, scoped to one API key (``--test-control SECRET``; absent otherwise).

A test suite's server (the pytest plugin's) turns this on; a production server never has these routes. Control
routes, each a POST with ``X-Reverb-Control: SECRET`` and a JSON body naming the test's own key. Any of them
registers the key: only a registered key's requests are read ahead, journaled and faulted.

- ``/_reverb/watch``   ``{"key"}`` registers the key (its requests are journaled from now on);
- ``/_reverb/faults``  ``{"key", "fault": {"kind", "times", "rate", "seed", "after", "seconds", "retry_after"}}``
  adds a fault for the next ``times`` requests of that key (default 1), or for a seeded fraction ``rate`` of them;
- ``/_reverb/journal`` ``{"key"}`` returns what that key sent: time, method, path, headers (minus credentials),
  body, the status answered and the fault applied;
- ``/_reverb/record``  ``{"key"}`` keeps each answer (status, headers, body chunks) in the journal, for a cassette;
- ``/_reverb/cassette`` ``{"key", "interactions", "model"}`` answers the key's matching requests from recorded
  interactions (api/replay.py); a miss goes to ``model`` (the local one) and is marked in the journal;
- ``/_reverb/reset``   ``{"key"}`` clears the key's faults, journal, cassette and recording (still registered);
- ``/_reverb/forget``  ``{"key"}`` unregisters the key.

Faults apply to the generating routes (chat, completions, embeddings, the gateway), each in the route's own dialect:
status kinds answer with that dialect's error body (``429`` carries ``Retry-After``, ``503`` too); ``reset`` cuts
the connection with a TCP reset before any byte; ``stall`` holds the response (before the first byte, or after
``after`` events) until the client leaves or ``seconds`` pass; ``slow_first_token`` delays the first event by
``seconds``; ``disconnect``, ``truncate`` (half of the next event, then the connection closes) and ``corrupt`` (the
next event's JSON broken, then the stream goes on) act after ``after`` stream events (an OpenAI chat stream's first
event is the role; each following one carries about one token). The hook is this one middleware; the only other
piece is the HTTP server's ``reverb.cut`` scope extension (cli/http_server.py), since ASGI cannot reset a socket.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import json
import random
import time
from dataclasses import dataclass, field

from starlette.responses import JSONResponse

from ..errors import (AuthenticationError, ContextLengthExceeded, EngineError, InsufficientCredit, InvalidRequest,
                      NotFound, OverloadedError, ReverbError, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable)
from .errors import error_response
from .replay import Cassette, capturing, with_model
from .routes import endpoint_of

PREFIX = "/_reverb/"
FAULTABLE = {"chat.completions", "completions", "embeddings", "gateway"}
STATUS_KINDS = {"429", "500", "502", "503", "504", "insufficient_quota", "context_length_exceeded"}
STREAM_KINDS = {"stall", "slow_first_token", "disconnect", "truncate", "corrupt"}
KINDS = STATUS_KINDS | STREAM_KINDS | {"reset"}
ACTIONS = ("watch", "faults", "journal", "record", "cassette", "reset", "forget")
HIDDEN_HEADERS = {b"authorization", b"proxy-authorization", b"cookie", b"x-reverb-control", b"api-key", b"x-api-key"}
MAX_KEYS, MAX_ENTRIES, MAX_RULES, MAX_BODY = 1024, 1000, 64, 256 * 1024
CORRUPT = b'data: {"choices": [{"index": 0, "delta": {"content": "\xff\x00 not json\n\n'


class Cut(OSError):
    """Raised to the app when it writes to a connection a fault has cut (the stream writer stops on OSError)."""


@dataclass
class Fault:
    kind: str
    times: int | None = 1          # requests left; None: every request, or a fraction with ``rate``
    rate: float | None = None
    seed: int = 0
    after: int = 0                 # stream events let through first
    seconds: float = 30.0          # stall / slow first token
    retry_after: int = 1           # 429 and 503
    rng: random.Random = field(default=None, repr=False)

    def take(self) -> bool:
        """Whether this request gets the fault (and count it)."""
        if self.times is not None and self.times <= 0:
            return False
        if self.rate is not None and self.rng.random() >= self.rate:
            return False
        if self.times is not None:
            self.times -= 1
        return True


def parse_fault(raw) -> Fault:
    """A fault from hostile JSON: every field checked, InvalidRequest naming the bad one."""
    if not isinstance(raw, dict):
        raise InvalidRequest("fault must be an object", param="fault")
    unknown = set(raw) - {"kind", "times", "rate", "seed", "after", "seconds", "retry_after"}
    if unknown:
        raise InvalidRequest(f"unknown fault field {sorted(unknown)[0][:64]!r}", param="fault")
    kind = str(raw.get("kind"))
    if kind not in KINDS:
        raise InvalidRequest(f"fault.kind must be one of {sorted(KINDS)}", param="fault.kind")

    def number(name, default, lo, hi, kind_=int):
        value = raw.get(name, default)
        if value is None and name in ("times", "rate"):
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi \
                or (kind_ is int and value != int(value)):
            raise InvalidRequest(f"fault.{name} must be a number from {lo} to {hi}", param=f"fault.{name}")
        return kind_(value)

    rate = number("rate", None, 0, 1, float)
    fault = Fault(kind=kind, times=number("times", None if rate is not None else 1, 0, 10**6),
                  rate=rate, seed=number("seed", 0, 0, 2**31), after=number("after", 0, 0, 10**6),
                  seconds=number("seconds", 30.0, 0, 3600, float), retry_after=number("retry_after", 1, 0, 3600))
    fault.rng = random.Random(fault.seed)
    return fault


def status_error(fault: Fault) -> ReverbError:
    return {
        "429": lambda: UpstreamRejected("Rate limit reached (injected by a test)", status=429,
                                        code="rate_limit_exceeded", type="requests", retry_after=fault.retry_after),
        "500": lambda: EngineError("injected by a test"),
        "502": lambda: UpstreamUnavailable("Bad gateway (injected by a test)"),
        "503": lambda: OverloadedError("Overloaded (injected by a test)", retry_after=fault.retry_after),
        "504": lambda: UpstreamTimeout("Gateway timeout (injected by a test)"),
        "insufficient_quota": lambda: InsufficientCredit("You exceeded your current quota (injected by a test)"),
        "context_length_exceeded": lambda: ContextLengthExceeded(
            "This model's maximum context length was exceeded (injected by a test)", param="messages"),
    }[fault.kind]()


class Faults:
    """ASGI middleware: the control routes, the journal, and the faults of each key."""

    def __init__(self, app, secret: str):
        self.app = app
        self.secret = secret.encode()
        self.rules: dict[bytes, list[Fault]] = {}
        self.journals: collections.OrderedDict[bytes, collections.deque] = collections.OrderedDict()
        self.cassettes: dict[bytes, Cassette] = {}   # replay: answers recorded for this key
        self.recording: set[bytes] = set()           # record: keep each answer in the journal

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"].startswith(PREFIX):
            return await (await self.control(scope, receive))(scope, receive, send)
        raw = _header(scope, b"authorization")
        if not raw or not raw.lower().startswith("bearer "):
            return await self.app(scope, receive, send)
        key = _digest(raw[7:].strip())
        if key not in self.journals:   # only keys a test registered: nobody else's body is read or kept
            return await self.app(scope, receive, send)
        body, tail = await _buffered(receive)
        entry = {"t": time.time(), "method": scope["method"], "path": scope["path"],
                 "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                             if k.lower() not in HIDDEN_HEADERS},
                 "body": _decode(body), "status": None, "fault": None, "t_response": None, "t_end": None}
        self._journal(key).append(entry)
        fault = None
        if scope["method"] == "POST" and endpoint_of(scope["path"]) in FAULTABLE:
            fault = next((f for f in self.rules.get(key, ()) if f.take()), None)
        send = _recording(send, entry)
        try:
            if fault is not None:
                entry["fault"] = fault.kind
                return await self.inject(fault, scope, receive, _receiver(body, tail, receive), send)
            cassette = self.cassettes.get(key)
            if cassette is not None and scope["method"] == "POST":
                hit = cassette.match(scope["method"], scope["path"], entry["body"])
                entry["replay"] = "hit" if hit else "miss"
                if hit:
                    return await Cassette.replay(hit, send)
                body = with_model(entry["body"], cassette.model) or body   # the recorded model is not here
            if key in self.recording:
                send = capturing(send, entry)
            await self.app(scope, _receiver(body, tail, receive), send)
        finally:
            entry["t_end"] = time.time()

    async def inject(self, fault: Fault, scope, receive, app_receive, send) -> None:
        """``receive`` is the connection's (to notice the client leaving), ``app_receive`` replays the body."""
        ctx = scope["state"]["ctx"]
        scope["state"]["error_code"] = "injected_" + fault.kind
        if fault.kind in STATUS_KINDS:
            await error_response(status_error(fault), ctx.dialect, ctx.request_id)(scope, app_receive, send)
        elif fault.kind == "reset":
            await _cut(scope, receive, reset=True)
        elif fault.kind == "stall" and fault.after == 0:
            await _until_gone(receive, fault.seconds)
            await self.app(scope, app_receive, send)
        else:
            try:
                await self.app(scope, app_receive, _stream_fault(fault, scope, receive, send))
            except Cut:
                pass   # the app wrote past the cut of a response that was not a stream (e.g. one JSON body)

    async def control(self, scope, receive):
        given = _header(scope, b"x-reverb-control") or ""
        if not hmac.compare_digest(given.encode("latin-1"), self.secret):
            return error_response(AuthenticationError("test control needs X-Reverb-Control"), "openai")
        action = scope["path"][len(PREFIX):]
        if scope["method"] != "POST" or action not in ACTIONS:
            return error_response(NotFound("Unknown control path"), "openai")
        body, _ = await _buffered(receive)
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return error_response(InvalidRequest("control body must be JSON"), "openai")
        if not isinstance(data, dict) or not isinstance(data.get("key"), str) or not data["key"]:
            return error_response(InvalidRequest("control body needs the test's key", param="key"), "openai")
        key = _digest(data["key"])
        if action == "forget":
            for table in (self.rules, self.journals, self.cassettes):
                table.pop(key, None)
            self.recording.discard(key)
            return JSONResponse({"ok": True})
        self._journal(key)   # any other action registers the key: its requests are journaled from now on
        if action == "faults":
            try:
                fault = parse_fault(data.get("fault"))
            except InvalidRequest as e:
                return error_response(e, "openai")
            rules = self.rules.setdefault(key, [])
            rules[:] = [f for f in rules if f.times is None or f.times > 0]   # spent faults make room
            if len(rules) >= MAX_RULES:
                return error_response(InvalidRequest(f"at most {MAX_RULES} faults per key"), "openai")
            rules.append(fault)
            return JSONResponse({"ok": True})
        if action == "journal":
            return JSONResponse({"requests": list(self.journals.get(key, ()))})
        if action == "record":
            self.recording.add(key)
            return JSONResponse({"ok": True})
        if action == "cassette":
            try:
                self.cassettes[key] = Cassette(data.get("interactions"), str(data.get("model") or ""))
            except (KeyError, TypeError, ValueError, AttributeError, UnicodeError):
                return error_response(InvalidRequest("not a cassette", param="interactions"), "openai")
            return JSONResponse({"ok": True})
        if action == "reset":
            self.rules.pop(key, None)
            self.cassettes.pop(key, None)
            self.recording.discard(key)
            self.journals[key].clear()
        return JSONResponse({"ok": True})   # watch: registered above

    def _journal(self, key: bytes) -> collections.deque:
        journal = self.journals.get(key)
        if journal is None:
            journal = self.journals[key] = collections.deque(maxlen=MAX_ENTRIES)
            while len(self.journals) > MAX_KEYS:
                self.journals.popitem(last=False)
        self.journals.move_to_end(key)
        return journal


def _stream_fault(fault: Fault, scope, receive, send):
    """The app's ``send``, with the fault applied after ``fault.after`` body events."""
    seen = 0
    done = False

    async def faulty(message):
        nonlocal seen, done
        if done:
            raise Cut("the connection was cut by a test fault")
        if message["type"] != "http.response.body" or not message.get("body"):
            return await send(message)
        index, seen = seen, seen + 1
        if index < fault.after or (index > fault.after and fault.kind in ("slow_first_token", "corrupt")):
            return await send(message)
        if fault.kind == "slow_first_token":
            await _until_gone(receive, fault.seconds)
            return await send(message)
        if fault.kind == "corrupt":   # one broken event, then the stream goes on
            await send({**message, "body": CORRUPT})
            return await send(message)
        done = True
        if fault.kind == "stall":
            await _until_gone(receive, fault.seconds)
        elif fault.kind == "truncate":
            await send({**message, "body": message["body"][: max(1, len(message["body"]) // 2)], "more_body": True})
        await _cut(scope, receive, reset=False)
        raise Cut("the connection was cut by a test fault")

    return faulty


async def _cut(scope, receive, reset: bool) -> None:
    """Close the connection (a TCP reset when ``reset``) and wait until the server has seen it go."""
    cut = scope.get("extensions", {}).get("reverb.cut")
    if cut is None:
        raise EngineError("this HTTP server cannot cut connections")
    cut(reset)
    await _until_gone(receive, 5.0)


async def _until_gone(receive, seconds: float) -> None:
    """Wait until the client disconnects, or ``seconds``."""
    async def gone():
        while (await receive())["type"] != "http.disconnect":
            pass
    try:
        await asyncio.wait_for(gone(), seconds)
    except asyncio.TimeoutError:
        pass


async def _buffered(receive):
    """Read the whole body (test servers only; at most MAX_BODY kept in the journal). Returns it and whatever
    arrived instead of its end (a disconnect), for ``_receiver``."""
    parts, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(parts), [message]
        parts.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(parts), []


def _receiver(body: bytes, tail: list, receive):
    """A ``receive`` that hands the app ``body`` whole, then passes through (a disconnect still arrives)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}, *tail]

    async def replaying():
        return pending.pop(0) if pending else await receive()

    return replaying


def _recording(send, entry: dict):
    async def recording(message):
        if message["type"] == "http.response.start":
            entry["status"], entry["t_response"] = message["status"], time.time()
            entry["headers_out"] = {k.decode("latin-1"): v.decode("latin-1") for k, v in message.get("headers", [])
                                    if k.lower() in (b"retry-after", b"x-should-retry", b"content-type")}
        await send(message)
    return recording


def _decode(body: bytes):
    """The body as JSON when it is (NaN and too-deep nesting stay text: the journal must serialise), else text."""
    text = body[:MAX_BODY].decode("utf-8", "replace")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return text


def _no_constant(name: str):
    raise ValueError(name)


def _digest(raw: str) -> bytes:
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).digest()


def _header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return v.decode("latin-1")
    return None
