"""A cap on requests in progress, as pure ASGI middleware: past ``max_connections`` busy requests a new one gets
503 with ``Retry-After`` in its dialect's JSON, before any work. ``/health`` is always answered, so a load
balancer can tell a busy server from a dead one. (Idle and half-sent connections are handled below the app, by the
HTTP server's connection guard: cli/http_server.py.)"""

from __future__ import annotations

from ..errors import RETRY_BUSY, OverloadedError
from .refuse import refuse

ALWAYS = {"/health"}


class Overload:
    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in ALWAYS:
            return await self.app(scope, receive, send)
        if self.in_flight >= self.limit:
            err = OverloadedError("the server is at its limit of requests in progress", retry_after=RETRY_BUSY)
            return await (await refuse(scope, err))(scope, receive, send)
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
