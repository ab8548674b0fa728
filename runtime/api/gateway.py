"""The gateway dialect: POST /api/endpoint.

Request ``{model, messages, options: {max_tokens, stream, stats, ...sampling}}``; success
``{status: 1, result: {response, tokens_input, tokens_output, price, model, request}}``. ``options.stats``
defaults to true; when false the token counts and price are left out. ``options.stream: true`` sends the text as
plain chunks as it is generated and then ends, with no final JSON.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import InvalidRequest, LedgerError
from ..generation import Generation
from ..models.registry import MICRO
from ..request import Ask
from ..service import Service
from ..types import Chunk
from . import params as P
from .body import read_json
from .stream import StreamAborted, fold, keep_body, stream_response


def parse(body: dict, settings) -> tuple[Ask, bool]:
    """Wire JSON -> (Ask, stats). Raises InvalidRequest naming ``param``."""
    model = P.model(body)
    messages = P.messages(body.get("messages"), settings)
    options = body.get("options", {})
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise InvalidRequest("'options' must be an object", param="options")
    sampling = P.sampling(options, settings, prefix="options.")
    stream = P.boolean(options, "stream", False, param="options.stream")
    stats = P.boolean(options, "stats", True, param="options.stats")
    return Ask(model=model, messages=tuple(messages), sampling=sampling, stream=stream), stats


async def endpoint(request: Request) -> object:
    service: Service = request.state.service
    body = await read_json(request, service.settings)
    ask, stats = parse(body, service.settings)
    ctx = keep_body(request, body)
    gen = await service.start(ctx, ask)
    request.state.generation = gen
    if ask.stream:
        return stream_response(request, gen, "text/plain; charset=utf-8", lambda first: _text(gen, first))
    text, final, price = await fold(request, gen)
    result = {"response": text}
    if stats:
        result.update(tokens_input=final.usage.prompt_tokens, tokens_output=final.usage.completion_tokens,
                      price=price / MICRO)
    # Only what was validated goes back out: the raw body may hold anything a client chose to send.
    result.update(model=gen.model, request=[{"role": m.role, "content": m.content} for m in ask.messages])
    return JSONResponse({"status": 1, "result": result}, headers={"x-reverb-price": str(price)})


async def _text(gen: Generation, first: Chunk):
    current = first
    while True:
        if current.text:
            yield current.text.encode("utf-8")
        if current.finish_reason is not None:
            break
        current = await anext(gen)
    if current.error is not None:
        raise StreamAborted  # plain text has no error frame: a broken stream is the honest signal
    try:
        await gen.settled
    except LedgerError:
        raise StreamAborted from None

