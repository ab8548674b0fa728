"""Browser-facing defences, as pure ASGI middleware.

``HostGuard``: a request whose ``Host`` is not an allowed name gets 400 before anything else runs. A DNS-rebinding
page reaches a local server under the attacker's own host name, so checking the name stops it. Allowed by default:
localhost names and the bind address; more with ``--allowed-host``.
``Cors``: no CORS headers at all unless origins are configured (``--cors-origin``); a configured ``*`` is sent
without credentials, as browsers require. Preflight requests are answered here, before auth.
"""

from __future__ import annotations

import re

from ..errors import InvalidRequest
from .refuse import refuse

LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def _host_name(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8000
        return value[: value.find("]") + 1]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class HostGuard:
    def __init__(self, app, bind_host: str, extra: tuple[str, ...] = ()):
        self.app = app
        self.allowed = LOCAL_NAMES | {bind_host.lower(), f"[{bind_host.lower()}]"} | {h.lower() for h in extra}
        self.any_host = "*" in self.allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.any_host:
            return await self.app(scope, receive, send)
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
        if _host_name(host) not in self.allowed:
            err = InvalidRequest("This server does not answer to that Host name", code="invalid_host")
            return await (await refuse(scope, err))(scope, receive, send)
        await self.app(scope, receive, send)


class Cors:
    def __init__(self, app, origins: tuple[str, ...]):
        self.app = app
        self.origins = set(origins)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.origins:
            return await self.app(scope, receive, send)
        origin = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"origin"), None)
        allow = "*" if "*" in self.origins else (origin if origin in self.origins else None)
        if allow is None:
            return await self.app(scope, receive, send)
        cors = [(b"access-control-allow-origin", allow.encode("latin-1")), (b"vary", b"Origin")]
        if scope["method"] == "OPTIONS" and any(k == b"access-control-request-method" for k, _ in scope["headers"]):
            asked = next((v for k, v in scope["headers"] if k == b"access-control-request-headers"), b"")
            headers = cors + [(b"access-control-allow-methods", b"GET, POST, DELETE, OPTIONS"),
                              (b"access-control-allow-headers", _allowed_headers(asked)),
                              (b"access-control-max-age", b"600"), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + cors}
            await send(message)

        await self.app(scope, receive, send_with_cors)


BASE_HEADERS = b"authorization, content-type"
_HEADER_LIST = re.compile(rb"[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*")


def _allowed_headers(asked: bytes) -> bytes:
    """The request headers a preflight may allow: the ones it asks for (the SDKs send their own: Anthropic's
    x-api-key and anthropic-version, OpenAI's x-stainless-*), echoed only when they are a plain list of header names
    of bounded length; otherwise authorization and content-type. The origin is already one the operator allowed."""
    asked = asked.strip()
    if asked and len(asked) <= 2048 and _HEADER_LIST.fullmatch(asked):
        return asked.lower()
    return BASE_HEADERS
