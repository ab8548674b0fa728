"""The OpenAI dialect: /v1/chat/completions (also /api/v1/...) and /v1/models.

Parses the wire body into engine types, starts a generation through the service, and renders chunks as OpenAI
JSON or SSE events. Unknown fields are accepted, as OpenAI's own clients send fields a local server may not know.
"""

from __future__ import annotations

import json
import time

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import InvalidRequest, LedgerError
from ..generation import Generation
from ..request import Ask
from ..service import Service
from ..types import Chunk, FinishReason
from . import params as P
from . import passthrough
from .body import read_json
from .errors import openai_body
from .sse import DONE, event
from .stream import fold, keep_body, stream_response


def parse(body: dict, settings) -> tuple[Ask, bool]:
    """Wire JSON -> (Ask, include_usage). Raises InvalidRequest naming ``param``."""
    model = P.model(body)
    messages = P.messages(body.get("messages"), settings)
    sampling = P.sampling(body, settings)
    P.integer(body, "n", 1, 1, 1)  # only n=1 is served; larger n is refused by the range check
    stream = P.boolean(body, "stream", False)
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not isinstance(opts, dict):
            raise InvalidRequest("'stream_options' must be an object", param="stream_options")
        include_usage = P.boolean(opts, "include_usage", False, param="stream_options.include_usage")
    return Ask(model=model, messages=tuple(messages), sampling=sampling, stream=stream), include_usage


async def chat_completions(request: Request) -> object:
    service: Service = request.state.service
    body = await read_json(request, service.settings)
    if passthrough.serves(service, body):  # a model behind an OpenAI-compatible upstream: passthrough.py
        return await passthrough.chat_completions(request, body, parse)
    ask, include_usage = parse(body, service.settings)
    ctx = keep_body(request, body)
    gen = await service.start(ctx, ask)
    request.state.generation = gen
    cid = "chatcmpl-" + ctx.request_id.removeprefix("req_")
    created = int(time.time())
    if ask.stream:
        return stream_response(request, gen, "text/event-stream; charset=utf-8",
                               lambda first: _sse(gen, first, cid, created, include_usage))
    text, final, price = await fold(request, gen)
    usage = final.usage
    return JSONResponse({
        "id": cid, "object": "chat.completion", "created": created, "model": gen.model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                     "logprobs": None, "finish_reason": _finish(final.finish_reason)}],
        "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                  "total_tokens": usage.total_tokens},
    }, headers={"x-request-id": ctx.request_id, "x-reverb-price": str(price)})


def _finish(reason: FinishReason | None) -> str:
    return "length" if reason is FinishReason.LENGTH else "stop"


async def _sse(gen: Generation, first: Chunk, cid: str, created: int, include_usage: bool):
    def chunk(delta: dict, finish: str | None) -> dict:
        out = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": gen.model,
               "system_fingerprint": None,
               "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            out["usage"] = None
        return out

    yield event(chunk({"role": "assistant", "content": ""}, None))
    # Content events differ only in their text: build the bytes around it once (this runs once per token).
    head, tail = event(chunk({"content": "\x00"}, None)).split(b'"\\u0000"')
    current = first
    while True:
        if current.text:
            yield head + json.dumps(current.text, ensure_ascii=False).encode("utf-8") + tail
        if current.finish_reason is not None:
            final = current
            break
        current = await anext(gen)
    if final.error is not None:
        yield event(openai_body(final.error)[1])
        return
    try:
        await gen.settled
    except LedgerError as e:
        yield event(openai_body(e)[1])
        return
    yield event(chunk({}, _finish(final.finish_reason)))
    if include_usage:
        u = final.usage
        yield event({"id": cid, "object": "chat.completion.chunk", "created": created, "model": gen.model,
                     "system_fingerprint": None, "choices": [],
                     "usage": {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                               "total_tokens": u.total_tokens}})
    yield DONE


async def list_models(request: Request) -> JSONResponse:
    service: Service = request.state.service
    # owned_by: "reverb" for a model served here, else the upstream's provider; provider names what runs it.
    data = [{"id": name, "object": "model", "created": b.info.created,
             "owned_by": b.info.provider if b.info.passthrough else "reverb", "provider": b.info.provider}
            for name, b in service.backends.items()]
    return JSONResponse({"object": "list", "data": data})

