"""Server-Sent Events for the OpenAI dialect: the framing, and the one loop that streams a generation's choices.

Every event is exactly one line ``data: <json>`` and a blank line (the Messages and Responses dialects put an
``event: <type>`` line before it): JSON never holds a raw line break, not even the ones only Unicode-aware
splitters see (U+0085, U+2028, U+2029, which json.dumps leaves raw and a client's ``splitlines()`` splits on), and
no comment or keep-alive lines are sent, so line-based readers that ``JSON.parse`` whatever follows ``data: ``
always work. The stream ends with ``data: [DONE]``; an error after the first byte is one
``data: {"error": ...}`` event.
"""

from __future__ import annotations

import json
from typing import AsyncIterator, Iterable, Protocol

from ..generation import Generation
from ..types import Chunk, Usage
from .errors import openai_body
from .stream import stream_failure

DONE = b"data: [DONE]\n\n"
SSE = "text/event-stream; charset=utf-8"


_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def event(payload: dict, kind: str | None = None) -> bytes:
    """One event: ``data: <json>``, after ``event: <kind>`` when given."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    if "\x85" in text or "\u2028" in text or "\u2029" in text:   # rare: a 30 ns scan, not a 2 us translate, per token
        text = text.translate(_BREAKS)
    data = text.encode("utf-8")
    return (b"event: " + kind.encode() + b"\n" if kind else b"") + b"data: " + data + b"\n\n"


class Frames(Protocol):
    """A dialect's SSE frame formats; ``events`` runs the stream. ``chunk`` is called once per chunk (once per
    token: keep it cheap) and returns its frame or None."""

    def open(self, first: Chunk) -> Iterable[bytes]: ...

    def chunk(self, chunk: Chunk) -> bytes | None: ...

    def finish(self, ends: dict[int, Chunk]) -> Iterable[bytes]: ...

    def usage(self, usage: Usage) -> dict: ...


async def events(gen: Generation, first: Chunk, frames: Frames, include_usage: bool) -> AsyncIterator[bytes]:
    """The one event loop over a generation's choices: each chunk's frame as it comes, then, once every choice has
    ended and the ledger has the row (no client sees a finish before its request is recorded), the finish frames,
    the usage frame when asked and ``[DONE]``; or one error event instead when the job or the ledger failed."""
    for data in frames.open(first):
        yield data
    ends: dict[int, Chunk] = {}
    current = first
    while True:
        data = frames.chunk(current)
        if data is not None:
            yield data
        if current.finish_reason is not None:
            ends[current.index] = current
        if gen.final is not None and len(ends) == gen.streams:
            break
        current = await anext(gen)
    failure = await stream_failure(gen, gen.final.error)
    if failure is not None:
        yield event(openai_body(failure)[1])
        return
    for data in frames.finish(ends):
        yield data
    if include_usage:
        yield event(frames.usage(gen.final.usage))
    yield DONE
