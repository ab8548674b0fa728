"""One running request as the client sees it: an async stream of Chunks that reports its end.

The backend delivers chunks (on the event loop, in order); the last one carries the finish reason and usage.
The generation hands that last chunk to ``on_end`` (the service, which settles the money) and exposes the
outcome as ``settled``. It knows nothing about the ledger.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable

from .ledger import RequestRecord
from .types import Chunk


@dataclass(frozen=True)
class Settlement:
    record: RequestRecord
    price: int                      # micro-units actually charged


class Hooks:
    """What the service reports as it works (metrics); the default does nothing. Must never raise."""

    def first_token(self, model: str, seconds: float) -> None: ...

    def token_gap(self, model: str, seconds: float) -> None: ...

    def settled(self, record: RequestRecord, price: int) -> None: ...


class Generation:
    def __init__(self, model: str, started: float, hooks: Hooks, on_end: Callable[[Chunk], None],
                 on_progress: Callable[[int], None] | None = None):
        self.model = model                          # the model running it (a fallback replaces it before any chunk)
        self.delivered = 0                          # text chunks handed out so far (one per token or fewer)
        self._on_progress = on_progress             # told the running count (the service records a mark)
        self.started = started
        self.first_token_at: float | None = None
        self._last_token_at = 0.0
        self._hooks = hooks
        self._on_end = on_end
        self._queue: asyncio.Queue[Chunk] = asyncio.Queue()
        self.final: Chunk | None = None
        self.handle = None                          # the backend's Handle, once submitted
        # Resolved with a Settlement once the ledger has the request's row (LedgerError if it could not).
        self.settled: asyncio.Future[Settlement] = asyncio.get_running_loop().create_future()

    def deliver(self, chunk: Chunk) -> None:
        """Called on the event loop by the backend, in order."""
        if chunk.text or chunk.passthrough is not None:  # an upstream's event counts even without text
            now = time.monotonic()
            if self.first_token_at is None:
                self.first_token_at = now
                self._hooks.first_token(self.model, now - self.started)
            else:
                self._hooks.token_gap(self.model, now - self._last_token_at)
            self._last_token_at = now
            self.delivered += 1
            if self._on_progress is not None and chunk.finish_reason is None:
                self._on_progress(self.delivered)
        self._queue.put_nowait(chunk)
        if chunk.finish_reason is not None:
            self.final = chunk
            self._on_end(chunk)

    def __aiter__(self):
        return self

    async def __anext__(self) -> Chunk:
        if self.final is not None and self._queue.empty():
            raise StopAsyncIteration
        return await self._queue.get()

    def cancel(self) -> None:
        """The client went away: stop generating within one step (no-op once the job has ended)."""
        if self.handle is not None and self.final is None:
            self.handle.cancel()

    async def collect(self) -> tuple[str, Chunk]:
        """Fold the stream into (text, final chunk)."""
        parts = []
        final = None
        async for chunk in self:
            parts.append(chunk.text)
            if chunk.finish_reason is not None:
                final = chunk
        return "".join(parts), final
