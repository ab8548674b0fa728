"""The OpenAI dialect: /v1/chat/completions (also /api/v1/...) and /v1/models.

Parses the wire body into engine types, starts a generation through the service, and renders chunks as OpenAI
JSON or SSE events. Unknown fields are accepted, as OpenAI's own clients send fields a local server may not know.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import InvalidRequest, LedgerError
from ..service import Generation, Service
from ..types import Chunk, FinishReason, Message, SamplingParams
from . import params as P
from .body import read_json
from .errors import openai_body
from .sse import DONE, event
from .stream import fold, stream_response

ENDPOINT = "chat.completions"


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[Message]
    sampling: SamplingParams
    max_tokens: int | None
    stream: bool
    include_usage: bool


def parse(body: dict, settings) -> ChatRequest:
    """Wire JSON -> ChatRequest. Raises InvalidRequest naming ``param``."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string", param="model")
    messages = P.messages(body.get("messages"), settings)
    sampling, max_tokens = P.sampling(body, settings)
    n = P.integer(body, "n", 1, 1, 1)
    _ = n  # only n=1 is served; larger n is refused by the range check above
    stream = P.boolean(body, "stream", False)
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not isinstance(opts, dict):
            raise InvalidRequest("'stream_options' must be an object", param="stream_options")
        include_usage = P.boolean(opts, "include_usage", False, param="stream_options.include_usage")
    return ChatRequest(model, messages, sampling, max_tokens, stream, include_usage)


async def chat_completions(request: Request) -> object:
    service: Service = request.state.service
    settings = service.settings
    rid = request.state.request_id
    started = request.state.started
    body = await read_json(request, max_bytes=settings.max_body_bytes, max_depth=settings.max_json_depth,
                           timeout=settings.body_timeout)
    req = parse(body, settings)
    raw = _body_text(body) if settings.log_bodies else None
    gen = await service.start(account=request.state.account, model=req.model, messages=req.messages,
                              params=req.sampling, max_tokens=req.max_tokens, endpoint=ENDPOINT,
                              request_id=rid, started=started, body=raw)
    request.state.generation = gen
    cid = "chatcmpl-" + rid.removeprefix("req_")
    created = int(time.time())
    if req.stream:
        return stream_response(request, gen, "text/event-stream; charset=utf-8",
                               lambda first: _sse(gen, first, cid, created, req.include_usage))
    text, final, price = await fold(request, gen)
    usage = final.usage
    return JSONResponse({
        "id": cid, "object": "chat.completion", "created": created, "model": gen.model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                     "logprobs": None, "finish_reason": _finish(final.finish_reason)}],
        "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                  "total_tokens": usage.total_tokens},
    }, headers={"x-request-id": rid, "x-reverb-price": str(price)})


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
        await gen.price
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
    data = [{"id": name, "object": "model", "created": rt.created, "owned_by": "reverb"}
            for name, rt in service.runtimes.items()]
    return JSONResponse({"object": "list", "data": data}, headers={"x-request-id": request.state.request_id})


def _body_text(body: dict) -> str:
    return json.dumps(body, ensure_ascii=False)[:100_000]

