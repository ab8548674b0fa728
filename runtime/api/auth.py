"""Pure ASGI middleware for what every request needs before a route runs.

``RequestContext`` gives each request an id (sent back as ``x-request-id`` on every response, errors included)
and a start time. ``BearerAuth`` turns ``Authorization: Bearer <key>`` into ``scope["state"]["account"]`` via the
ledger (SHA-256 digests compared in constant time) and answers 401 itself, in the dialect of the path, because
user middleware sits outside Starlette's exception handlers.
"""

from __future__ import annotations

import secrets
import time

from ..errors import AuthenticationError
from .errors import error_response, is_gateway

PUBLIC_PATHS = {"/health"}


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


class RequestContext:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        rid = state["request_id"] = new_request_id()
        state["started"] = time.monotonic()

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


class BearerAuth:
    def __init__(self, app, public_paths: set[str] | None = None):
        self.app = app
        self.public = PUBLIC_PATHS | (public_paths or set())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.public:
            return await self.app(scope, receive, send)
        state = scope["state"]
        service = state["service"]
        raw = _bearer(scope)
        account = await service.authenticate(raw) if raw else None
        if account is None:
            err = AuthenticationError("Incorrect API key provided" if raw else
                                      "Missing API key: send 'Authorization: Bearer <key>'")
            path = scope["path"]
            state["error_code"] = err.code
            await service.reject(None, endpoint="gateway" if is_gateway(path) else path, model=None,
                                 request_id=state["request_id"], error=err, started=state["started"])
            return await error_response(err, path, state["request_id"])(scope, receive, send)
        state["account"] = account
        await self.app(scope, receive, send)


def _bearer(scope) -> str | None:
    for key, value in scope.get("headers", []):
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            if scheme.lower() == "bearer" and token and len(token) <= 512:
                return token
            return None
    return None
