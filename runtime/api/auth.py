"""Pure ASGI middleware for what every request needs before a route runs.

``Context`` gives each request its ``RequestContext`` (id, start time, ledger endpoint name and dialect from the
route table) and sends the id back as ``x-request-id`` on every response, errors included. ``BearerAuth`` turns
``Authorization: Bearer <key>`` (or Anthropic's ``x-api-key``) into the context's account via the ledger (SHA-256
digests compared in constant time) and refuses with 401 itself, because user middleware sits outside Starlette's
exception handlers.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from ..errors import AuthenticationError, LedgerError, PermissionDenied
from ..request import RequestContext
from .ratelimit import headers as ratelimit_headers
from .refuse import refuse
from .routes import ROUTES, dialect_of, endpoint_of, lookup


class Context:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        path = scope["path"]
        peer = scope.get("client")
        ctx = state["ctx"] = RequestContext(endpoint=endpoint_of(path), dialect=dialect_of(path),
                                            client=str(peer[0]) if peer else "")
        rid = ctx.request_id.encode()

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", rid))
                headers += ratelimit_headers(await _limits(state))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


async def _limits(state) -> dict | None:
    """The rate-limit header values for this response: the reservation's (or the refusal's), else, for a key
    with a per-minute limit, the window as it stands (never failing the response over it)."""
    limits = state.get("ratelimit") or getattr(state.get("generation"), "limits", None)
    account = state["ctx"].account
    if limits or account is None or not account.rated or "service" not in state:
        return limits
    try:
        return await state["service"].db(state["service"].ledger.window, account.key_id)
    except LedgerError:
        return None


class BearerAuth:
    """``loopback_public``: paths answered without a key to clients on a loopback address (``--metrics-public``
    for a local scraper). A route marked ``operator`` refuses other keys with 403."""

    def __init__(self, app, loopback_public: set[str] | None = None):
        self.app = app
        self.public = {r.path for r in ROUTES if r.public}
        self.loopback_public = set(loopback_public or ())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.public:
            return await self.app(scope, receive, send)
        if scope["path"].rstrip("/") in self.loopback_public and _loopback(scope):
            return await self.app(scope, receive, send)
        state = scope["state"]
        raw = _bearer(scope)
        try:
            account = await state["service"].authenticate(raw) if raw else None
        except AuthenticationError as e:   # a known key that can no longer be used (expired)
            return await (await refuse(scope, e))(scope, receive, send)
        if account is None:
            err = AuthenticationError("Incorrect API key provided" if raw else
                                      "Missing API key: send 'Authorization: Bearer <key>' (or 'x-api-key: <key>')")
            return await (await refuse(scope, err))(scope, receive, send)
        state["ctx"] = replace(state["ctx"], account=account)
        route = lookup(scope["path"])
        if route is not None and route.operator and not account.operator:
            err = PermissionDenied("This route needs an operator key (an admin key, or one given to the server "
                                   "with --api-key)")
            return await (await refuse(scope, err))(scope, receive, send)
        await self.app(scope, receive, send)


def _loopback(scope) -> bool:
    peer = scope.get("client")
    try:
        return peer is not None and ipaddress.ip_address(peer[0]).is_loopback
    except ValueError:
        return False


def _bearer(scope) -> str | None:
    """The key from ``Authorization: Bearer <key>``, or Anthropic's ``x-api-key: <key>``."""
    for key, value in scope.get("headers", []):
        if key == b"x-api-key":
            token = value.decode("latin-1").strip()
            return token if token and len(token) <= 512 else None
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            if scheme.lower() == "bearer" and token and len(token) <= 512:
                return token
            return None
    return None
