"""One running request as the client sees it: an async stream of Chunks that reports its end.

The backend delivers chunks (on the event loop, in order); each choice ends with a chunk carrying its finish reason
and usage. When every choice has ended the generation merges those into one ``final`` chunk (usage summed), hands it
to ``on_end`` (the service, which settles the money) and exposes the outcome as ``settled``. It knows nothing about
the ledger.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Awaitable, Callable

from .ledger import RequestRecord
from .types import Chunk, FinishReason, Usage


@dataclass(frozen=True)
class Settlement:
    record: RequestRecord
    price: int                      # micro-units actually charged


class Hooks:
    """What the service reports as it works (metrics); the default does nothing. Must never raise."""

    def first_token(self, model: str, seconds: float) -> None: ...

    def token_gap(self, model: str, seconds: float) -> None: ...

    def settled(self, record: RequestRecord, price: int) -> None: ...

    def model_loaded(self, model: str, seconds: float, ok: bool) -> None: ...


class Generation:
    def __init__(self, model: str, started: float, hooks: Hooks, on_end: Callable[[Chunk], None],
                 on_progress: Callable[[int], None] | None = None, streams: int = 1):
        self.model = model                          # the model running it (a fallback replaces it before any chunk)
        self.streams = streams                      # choice streams the backend delivers, each with its own end
        self._ends: list[Chunk] = []
        self.delivered = 0                          # output chunks handed out so far (one per token or fewer)
        self._on_progress = on_progress             # told the running count (the service records a mark)
        self.started = started
        self.first_token_at: float | None = None
        self._last_token_at = 0.0
        self._hooks = hooks
        self._on_end = on_end
        self._queue: asyncio.Queue[Chunk] = asyncio.Queue()
        self.final: Chunk | None = None
        self.handle = None                          # the backend's Handle, once submitted
        self.limits: dict = {}                      # the rate-limit header values its reservation returned
        self.prompt_tokens = 0                      # the prompt as counted before the job (the usage has the final)
        # Awaited before output is handed out (the service's lease check for a stream that holds credit); it may
        # end the generation (``lose``), after which no more output is handed out.
        self.gate: Callable[[], Awaitable[None]] | None = None
        self.lost: Exception | None = None
        # Resolved with a Settlement once the ledger has the request's row (LedgerError if it could not).
        self.settled: asyncio.Future[Settlement] = asyncio.get_running_loop().create_future()

    def deliver(self, chunk: Chunk) -> None:
        """Called on the event loop by the backend, in order."""
        if chunk.text or chunk.tool_calls or chunk.passthrough is not None:  # output, even without text
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
            self._ends.append(chunk)
            if len(self._ends) == self.streams:
                final = merge(self._ends)
                if self.lost is not None:
                    final = replace(final, finish_reason=FinishReason.ERROR, error=self.lost)
                self.final = final
                self._on_end(self.final)

    def __aiter__(self):
        return self

    async def __anext__(self) -> Chunk:
        while True:
            if self.final is not None and self._queue.empty():
                raise StopAsyncIteration
            chunk = await self._queue.get()
            output = bool(chunk.text or chunk.tool_calls or chunk.passthrough is not None or chunk.logprobs)
            if output and self.gate is not None and self.lost is None:
                await self.gate()
            if self.lost is None:
                return chunk
            if chunk.finish_reason is not None:   # ended: its end still comes, with nothing more to show
                return replace(chunk, text="", tool_calls=(), passthrough=None, logprobs=(), error=self.lost)

    def cancel(self) -> None:
        """The client went away: stop generating within one step (no-op once the job has ended)."""
        if self.handle is not None and self.final is None:
            self.handle.cancel()

    def lose(self, error: Exception) -> None:
        """End it now, handing out nothing more (this server lost the hold it ran under): its settlement then
        fails closed, and the client sees ``error``'s kind of failure instead of a finish."""
        if self.lost is None:
            self.lost = error
            self.cancel()

    async def collect(self) -> tuple[str, Chunk]:
        """Fold the stream into (text of every choice, the merged final chunk)."""
        parts = [chunk.text async for chunk in self]
        return "".join(parts), self.final


def merge(ends: list[Chunk]) -> Chunk:
    """One chunk for the whole request from each choice's last chunk: usage summed; failed if any choice failed,
    cancelled if any was cancelled."""
    if len(ends) == 1:
        return ends[0]
    usage = sum((c.usage or Usage(0, 0) for c in ends), Usage(0, 0))
    error = next((c.error for c in ends if c.error is not None), None)
    reasons = {c.finish_reason for c in ends}
    reason = (FinishReason.ERROR if error is not None or FinishReason.ERROR in reasons
              else FinishReason.CANCELLED if FinishReason.CANCELLED in reasons else ends[-1].finish_reason)
    return Chunk(finish_reason=reason, usage=usage, error=error)
