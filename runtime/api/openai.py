"""The OpenAI dialect: /v1/chat/completions (also /api/v1/...) and /v1/models, /v1/models/{id}.

Parses the wire body into engine types, starts a generation through the service, and renders chunks as OpenAI
JSON or SSE events. Every Chat Completions field is honoured or refused with 400 naming it (surface.py); fields
that are not OpenAI's (top_k, min_p, ...) are accepted.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import InvalidRequest, ModelNotFound
from ..generation import Generation
from ..request import Ask
from ..service import Service
from ..types import Chunk
from . import params as P
from . import passthrough, surface
from .body import read_json
from .choices import chat_logprobs, finish, fold, tool_call_deltas
from .errors import openai_body
from .sse import DONE, event
from .stream import fold as run_to_end
from .stream import keep_body, stream_failure, stream_response


def parse(body: dict, settings) -> tuple[Ask, bool]:
    """Wire JSON -> (Ask, include_usage). Raises InvalidRequest naming ``param``."""
    surface.refuse(body, surface.CHAT_REFUSED)
    surface.accepted(body)
    model = P.model(body)
    messages = P.messages(body.get("messages"), settings)
    logprobs, top = surface.chat_logprobs(body)
    sampling = replace(P.sampling(body, settings), n=surface.n(body), logprobs=logprobs, top_logprobs=top)
    stream = P.boolean(body, "stream", False)
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not isinstance(opts, dict):
            raise InvalidRequest("'stream_options' must be an object", param="stream_options")
        include_usage = P.boolean(opts, "include_usage", False, param="stream_options.include_usage")
        P.boolean(opts, "include_obfuscation", True, param="stream_options.include_obfuscation")
    return Ask(model=model, messages=tuple(messages), sampling=sampling, stream=stream,
               response_format=surface.response_format(body), tools=surface.tools(body)), include_usage


def usage_json(usage) -> dict:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


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
                               lambda first: _sse(gen, first, cid, created, include_usage, ask))
    chunks, final, price = await run_to_end(request, gen)
    return JSONResponse({
        "id": cid, "object": "chat.completion", "created": created, "model": gen.model,
        "system_fingerprint": None,
        "choices": [_choice(c, ask.sampling.logprobs) for c in fold(chunks, ask.choices)],
        "usage": usage_json(final.usage),
    }, headers={"x-request-id": ctx.request_id, "x-reverb-price": str(price)})


def _choice(c, logprobs: bool) -> dict:
    message = {"role": "assistant", "content": c.content, "refusal": None}
    if c.calls:
        message["tool_calls"] = c.calls
    return {"index": c.index, "message": message, "logprobs": chat_logprobs(c.logprobs) if logprobs else None,
            "finish_reason": finish(c.finish_reason)}


async def _sse(gen: Generation, first: Chunk, cid: str, created: int, include_usage: bool, ask: Ask):
    def chunk(index: int, delta: dict, finish_reason: str | None, logprobs=None) -> dict:
        out = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": gen.model,
               "system_fingerprint": None,
               "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}
        if include_usage:
            out["usage"] = None
        return out

    for i in range(ask.choices):
        yield event(chunk(i, {"role": "assistant", "content": ""}, None))
    # Plain content events differ only in their text: build the bytes around it once (this runs once per token).
    head, tail = event(chunk(0, {"content": "\x00"}, None)).split(b'"\\u0000"')
    ends: dict[int, Chunk] = {}
    current = first
    while True:
        if current.logprobs or current.tool_calls or current.index:
            delta: dict = {}
            if current.text:
                delta["content"] = current.text
            if current.tool_calls:
                delta["tool_calls"] = tool_call_deltas(current.tool_calls)
            if delta or current.logprobs:
                yield event(chunk(current.index, delta, None,
                                  chat_logprobs(current.logprobs) if current.logprobs else None))
        elif current.text:
            yield head + json.dumps(current.text, ensure_ascii=False).encode("utf-8") + tail
        if current.finish_reason is not None:
            ends[current.index] = current
        if gen.final is not None and len(ends) == gen.choices:
            break
        current = await anext(gen)
    final = gen.final
    failure = await stream_failure(gen, final.error)
    if failure is not None:
        yield event(openai_body(failure)[1])
        return
    for i in sorted(ends):  # after the ledger row: no client sees a finish before the request is recorded
        yield event(chunk(i, {}, finish(ends[i].finish_reason)))
    if include_usage:
        yield event({"id": cid, "object": "chat.completion.chunk", "created": created, "model": gen.model,
                     "system_fingerprint": None, "choices": [], "usage": usage_json(final.usage)})
    yield DONE


def _model_json(name: str, backend) -> dict:
    # owned_by: "reverb" for a model served here, else the upstream's provider; provider names what runs it.
    info = backend.info
    return {"id": name, "object": "model", "created": info.created,
            "owned_by": info.provider if info.passthrough else "reverb", "provider": info.provider}


async def list_models(request: Request) -> JSONResponse:
    """The loaded models this key (and its team) may use."""
    service: Service = request.state.service
    account = request.state.ctx.account
    return JSONResponse({"object": "list", "data": [_model_json(n, b) for n, b in service.backends.items()
                                                    if account is None or account.may_use(n)]})


async def get_model(request: Request) -> JSONResponse:
    """One loaded model; 404 model_not_found for any other name (never a fallback)."""
    service: Service = request.state.service
    name = request.path_params["model"]
    backend = service.backends.get(name)
    account = request.state.ctx.account
    if backend is None or (account is not None and not account.may_use(name)):
        raise ModelNotFound(f"The model '{name}' does not exist or is not loaded on this server", param="model",
                            model=None)
    return JSONResponse(_model_json(name, backend))
