"""An ASGI response that streams one Generation to the client.

It holds the status line back until the first chunk exists, so a request that times out in the queue still gets
a proper 503. It watches for the client going away and cancels the job (its slot frees within one step); each
write has a timeout, so a client that stops reading cannot pin a slot or buffer without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Callable

from ..errors import LedgerError
from ..generation import Generation
from ..request import RequestContext
from ..types import Chunk
from .errors import error_response


@contextlib.asynccontextmanager
async def cancel_on_disconnect(receive, gen: Generation):
    """While inside, a client disconnect cancels ``gen``. For handlers that do not stream."""
    async def watch():
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gen.cancel()
                return
    task = asyncio.create_task(watch())
    try:
        yield
    except BaseException:  # the handler itself was cancelled (shutdown) or failed: the job must not outlive it
        gen.cancel()
        raise
    finally:
        task.cancel()


class GenerationResponse:
    def __init__(self, gen: Generation, *, media_type: str, body: Callable[[Chunk], AsyncIterator[bytes]],
                 on_early_error: Callable[[BaseException], object], headers: dict[str, str],
                 write_timeout: float):
        self.gen = gen
        self.media_type = media_type
        self.body = body
        self.on_early_error = on_early_error
        self.headers = headers
        self.write_timeout = write_timeout

    async def __call__(self, scope, receive, send) -> None:
        gen = self.gen
        async with cancel_on_disconnect(receive, gen):
            try:
                first = await anext(gen)
                if first.error is not None and first.finish_reason is not None and not first.text:
                    await settled_quietly(gen)
                    response = self.on_early_error(first.error)
                    await response(scope, receive, send)
                    return
                headers = [(b"content-type", self.media_type.encode()), (b"cache-control", b"no-cache"),
                           (b"x-accel-buffering", b"no")]
                headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                async for data in self.body(first):
                    await asyncio.wait_for(send({"type": "http.response.body", "body": data, "more_body": True}),
                                           self.write_timeout)
                await asyncio.wait_for(send({"type": "http.response.body", "body": b"", "more_body": False}),
                                       self.write_timeout)
            except (OSError, asyncio.TimeoutError, StreamAborted):
                return  # the client is gone, stopped reading, or must not see a clean end
            finally:
                gen.cancel()


class StreamAborted(Exception):
    """Raised by a body generator to drop the connection without a clean end (the client sees a broken
    stream, never a success), e.g. when the ledger could not record the request."""


def stream_response(request, gen: Generation, media_type: str,
                    body: Callable[[Chunk], AsyncIterator[bytes]]) -> GenerationResponse:
    """The streaming answer to ``request``: errors before the first chunk in the path's dialect."""
    ctx: RequestContext = request.state.ctx

    def early_error(e: BaseException):
        request.scope["state"]["error_code"] = getattr(e, "code", None) or "internal_error"  # for the access log
        return error_response(e, ctx.dialect, ctx.request_id)

    return GenerationResponse(gen, media_type=media_type, body=body, on_early_error=early_error,
                              headers={}, write_timeout=request.state.service.settings.stream_write_timeout)


async def fold(request, gen: Generation) -> tuple[list[Chunk], Chunk, int]:
    """The blocking answer: (every chunk, the merged final chunk, price). A disconnect cancels the job; an engine
    failure raises; waiting for the settlement means no success is returned before its ledger row exists
    (LedgerError otherwise)."""
    async with cancel_on_disconnect(request.receive, gen):
        chunks = [chunk async for chunk in gen]
    final = gen.final
    if final.error is not None:
        await settled_quietly(gen)
        raise final.error
    return chunks, final, (await gen.settled).price


async def stream_failure(gen: Generation, error: Exception | None) -> Exception | None:
    """Before a stream's finish frames: the error that must end it instead (the job's own, once its ledger row is
    settled, or the ledger's when the request could not be recorded), or None when it settled: no client sees a
    finish before its request is recorded."""
    if error is not None:
        await settled_quietly(gen)
        return error
    try:
        await gen.settled
    except LedgerError as e:
        return e
    return None


async def settled_quietly(gen: Generation) -> None:
    """Wait for a failed job's ledger row before the error is answered, so the access log and metrics see the
    settled outcome; a ledger failure here changes nothing about the error the client gets."""
    with contextlib.suppress(Exception):
        await gen.settled
