"""The one handler of every generating route: read the body, parse it (wire.py), choose the local or the relay view
from the model the request names, start the generation, then stream it or fold it. A dialect supplies only its
media type and its two renderers; a model behind an upstream has its own pair (passthrough.py).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import InvalidRequest
from ..generation import Generation
from ..request import Ask, RequestContext
from ..service import Service
from ..types import Chunk
from . import wire
from .body import keep_body, read_json
from .stream import fold, stream_response


@dataclass(frozen=True)
class Answer:
    """What a renderer writes from: the request, its generation and the answer's id and time."""
    ctx: RequestContext
    ask: Ask
    render: wire.Render
    gen: Generation
    id: str
    created: int


@dataclass(frozen=True)
class Renderers:
    media_type: str                                              # of a streamed answer
    stream: Callable[[Answer, Chunk], AsyncIterator[bytes]]      # from the first chunk on
    whole: Callable[[Answer, list[Chunk], Chunk, int], dict]     # chunks, the final chunk, price -> JSON body
    #                                                              (or an awaitable of it)


@dataclass(frozen=True)
class Dialect:
    wire: str                            # its rows in wire.py
    id_prefix: str                       # of the answer's id ("chatcmpl-")
    local: Renderers
    relay: Renderers | None = None       # for a model behind an upstream; None: this dialect does not relay it
    # the dialect's own view of a checked body (request, reading, relayed) -> (ask, render); None: the table's
    # local view, or its relay view for a model behind an upstream
    view: Callable[[Request, wire.Reading, bool], Awaitable[tuple[Ask, wire.Render]]] | None = None


async def begin(request: Request, dialect: str, relays: bool = False, view=None) -> tuple[Service, RequestContext,
                                                                                          Ask, wire.Render, bool]:
    """Read and parse the body: (service, context, ask, render options, relayed). The relay view is taken when
    ``relays`` and the catalogue serves the model named from an upstream; a dialect's own ``view`` replaces both."""
    service: Service = request.state.service
    body = await read_json(request, service.settings)
    ctx = keep_body(request, body)
    relayed = relays and _upstream(service, body.get("model"))
    if view is not None:
        ask, render = await view(request, wire.read(body, dialect, service.settings), relayed)
    else:
        ask, render = wire.parse(body, dialect, service.settings, relay=relayed)
    return service, ctx, ask, render, relayed


def _upstream(service: Service, model) -> bool:
    spec = service.registry.specs.get(model) if isinstance(model, str) else None
    return spec is not None and spec.upstream


def endpoint(dialect: Dialect) -> Callable[[Request], Awaitable[Response]]:
    """The route handler of ``dialect`` (routes.py names it)."""
    async def run(request: Request) -> Response:
        return await handle(request, dialect)
    run.__name__ = run.__qualname__ = f"{dialect.wire}_endpoint"
    return run


async def handle(request: Request, dialect: Dialect) -> Response:
    service, ctx, ask, render, relayed = await begin(request, dialect.wire, dialect.relay is not None, dialect.view)
    try:
        gen = await service.start(ctx, ask)
    except InvalidRequest as e:  # the backend names OpenAI's fields; the dialect may keep them elsewhere
        e.param = wire.wire_param(e.param, dialect.wire)
        raise
    request.state.generation = gen      # from here on the request owns its ledger row
    answer = Answer(ctx, ask, render, gen, dialect.id_prefix + ctx.request_id.removeprefix("req_"), int(time.time()))
    renderers = dialect.relay if relayed else dialect.local
    if ask.stream:
        response = stream_response(request, gen, renderers.media_type,
                                   lambda first: renderers.stream(answer, first))
        response.headers.update(render.headers)
        return response
    chunks, final, price = await fold(request, gen)
    body = renderers.whole(answer, chunks, final, price)
    if inspect.isawaitable(body):   # a dialect that writes before it answers (a stored response)
        body = await body
    return JSONResponse(body, headers={"x-request-id": ctx.request_id, "x-reverb-price": str(price),
                                       **dict(render.headers)})
