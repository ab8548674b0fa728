"""The HTTP server: uvicorn (the only module that imports it) with reverb's connection rules.

uvicorn on its own keeps a connection that never sends a complete request open forever, and at its
``limit_concurrency`` answers everyone, ``/health`` included, with a plain-text 503. So the protocol here adds:

- a header deadline: a connection that has not sent a complete request line and headers within
  ``header_timeout`` seconds of connecting (or of starting its next request) is closed, however slowly it
  trickles bytes;
- a connection cap that evicts instead of refusing: past ``max_connections`` open connections, the oldest
  connection with no request in progress (one that has sent nothing, half a header, or sits idle on keep-alive)
  is closed, so idle sockets cannot lock out real clients; a new connection is closed at once only when twice
  the cap are busy with requests;
- busy requests themselves are capped by ``api/overload.py`` in the app, which answers in the dialect's JSON with
  ``Retry-After`` and always lets ``/health`` through.
Idle keep-alive connections close after ``keep_alive_timeout`` (uvicorn's own timer).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..settings import Settings

log = logging.getLogger("reverb.http")


class ConnectionGuard:
    """The open connections of one server, oldest first, and the eviction rule."""

    def __init__(self, max_connections: int, header_timeout: float):
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.open: dict[object, float] = {}    # protocol -> time it connected (insertion order = age)
        self.evicted = 0

    def admit(self, conn) -> bool:
        """Register a new connection, evicting an idle one past the cap. False: close the new one at once."""
        self.open[conn] = time.monotonic()
        if len(self.open) <= self.max_connections:
            return True
        for other in self.open:
            if other is not conn and not other.busy():
                other.drop()
                self.evicted += 1
                return True
        return len(self.open) <= 2 * self.max_connections

    def closed(self, conn) -> None:
        self.open.pop(conn, None)


class GuardedProtocol(HttpToolsProtocol):
    guard: ConnectionGuard   # set on the subclass made for one server (protocol_class)

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if not self.guard.admit(self):
            self.drop()
            return
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        self.guard.closed(self)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        # ASGI cannot close a connection on purpose; test-only faults (api/faults.py) need to.
        self.scope.setdefault("extensions", {})["reverb.cut"] = self.cut

    def cut(self, reset: bool) -> None:
        """Close this connection now, unflushed; ``reset``: with a TCP RST (SO_LINGER 0) instead of a FIN."""
        if self.transport is None or self.transport.is_closing():
            return
        sock = self.transport.get_extra_info("socket")
        if reset and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # A keep-alive connection that starts sending its next request gets the header deadline again
        # (on_message_begin); until then uvicorn's keep-alive timer closes it when idle.

    def busy(self) -> bool:
        """A request is being served (headers complete, response not finished)."""
        return self.cycle is not None and not self.cycle.response_complete

    def drop(self) -> None:
        """Close without a response: no request was read on this connection (or none is in progress)."""
        self._disarm()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.guard.header_timeout, self._header_deadline)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline(self) -> None:
        self._header_timer = None
        if not self.busy():
            self.drop()


def protocol_class(guard: ConnectionGuard) -> type[GuardedProtocol]:
    return type("ReverbHttpProtocol", (GuardedProtocol,), {"guard": guard})


def run(app, settings: Settings, announce) -> int:
    """Serve ``app`` until SIGTERM/SIGINT, then drain gracefully. ``announce(url)`` runs once it accepts
    connections. Returns the exit code (0 after a graceful drain)."""
    guard = ConnectionGuard(settings.max_connections, settings.header_timeout)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                            http=protocol_class(guard), timeout_graceful_shutdown=settings.drain_timeout,
                            lifespan="on",
                            timeout_keep_alive=settings.keep_alive_timeout,
                            h11_max_incomplete_event_size=32 * 1024)

    class Server(uvicorn.Server):
        """uvicorn's server, except that after a graceful drain on SIGTERM/SIGINT the process exits 0 instead of
        re-raising the signal: a drained server has done nothing wrong, and CI scripts read the exit code."""

        def handle_exit(self, sig, frame):
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    server = Server(config)

    async def main() -> int:
        async def watch():
            while not server.started:
                if server.should_exit:
                    return
                await asyncio.sleep(0.02)
            host, port = server.servers[0].sockets[0].getsockname()[:2]
            try:
                announce(f"http://{host if ':' not in host else f'[{host}]'}:{port}")
            except Exception:   # never a server that runs but never says it is ready
                log.exception("could not announce the server; stopping")
                server.should_exit = True

        task = asyncio.create_task(watch())
        await server.serve()
        task.cancel()
        return 0 if server.started else 1

    return asyncio.run(main())
