"""The legacy Completions dialect: POST /v1/completions (raw text in, text out; no chat template).

``prompt`` is a string or a list of strings (each gets ``n`` choices, indexed prompt * n + i); ``echo`` and
``suffix`` are refused, ``best_of`` is accepted only equal to ``n``; ``logprobs`` (0-5) asks for that many
alternatives per token. Billing, logging and streaming are those of chat completions.
"""

from __future__ import annotations

import time
from dataclasses import replace

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import InvalidRequest
from ..generation import Generation
from ..request import Ask
from ..service import Service
from ..types import Chunk
from . import params as P
from . import surface
from .body import read_json
from .choices import completion_logprobs, finish, fold
from .errors import openai_body
from .openai import usage_json
from .sse import DONE, event
from .stream import fold as run_to_end
from .stream import keep_body, stream_failure, stream_response

MAX_PROMPTS = 32            # one queued job each
MAX_LOGPROBS = 5            # OpenAI's limit for this endpoint
DEFAULT_MAX_TOKENS = 16     # OpenAI's default for this endpoint


def prompts(body: dict, settings) -> tuple[str, ...]:
    value = body.get("prompt")
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or len(items) > MAX_PROMPTS:
        raise InvalidRequest(f"'prompt' must be a string or an array of 1 to {MAX_PROMPTS} strings", param="prompt")
    for i, text in enumerate(items):
        where = "prompt" if isinstance(value, str) else f"prompt[{i}]"
        if not isinstance(text, str):  # token arrays would bypass the rule that user text is never control tokens
            raise InvalidRequest(f"'{where}' must be a string (token arrays are not supported)", param=where)
        if len(text) > settings.max_message_chars:
            raise InvalidRequest(f"'{where}' must be valid text of at most {settings.max_message_chars} characters",
                                 param=where)
    return tuple(items)


def parse(body: dict, settings) -> tuple[Ask, bool]:
    """Wire JSON -> (Ask, include_usage). Raises InvalidRequest naming ``param``."""
    surface.refuse(body, surface.COMPLETIONS_REFUSED)
    surface.accepted(body)
    model = P.model(body)
    texts = prompts(body, settings)
    n = surface.n(body)
    if body.get("best_of") is not None and P.integer(body, "best_of", 1, surface.MAX_N, None) != n:
        raise InvalidRequest("'best_of' is supported only equal to 'n' (every choice is returned)", param="best_of")
    top = P.integer(body, "logprobs", 0, MAX_LOGPROBS, None)
    sampling = P.sampling(body, settings)
    if sampling.max_tokens is None:
        sampling = replace(sampling, max_tokens=min(DEFAULT_MAX_TOKENS, settings.max_tokens_cap))
    sampling = replace(sampling, n=n, logprobs=top is not None, top_logprobs=top or 0)
    stream = P.boolean(body, "stream", False)
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not isinstance(opts, dict):
            raise InvalidRequest("'stream_options' must be an object", param="stream_options")
        include_usage = P.boolean(opts, "include_usage", False, param="stream_options.include_usage")
    return Ask(model=model, messages=(), sampling=sampling, stream=stream, prompt=texts,
               keep_alive=P.keep_alive(body)), include_usage


async def completions(request: Request) -> object:
    service: Service = request.state.service
    body = await read_json(request, service.settings)
    ask, include_usage = parse(body, service.settings)
    ctx = keep_body(request, body)
    gen = await service.start(ctx, ask)
    request.state.generation = gen
    cid = "cmpl-" + ctx.request_id.removeprefix("req_")
    created = int(time.time())
    if ask.stream:
        return stream_response(request, gen, "text/event-stream; charset=utf-8",
                               lambda first: _sse(gen, first, cid, created, include_usage, ask))
    chunks, final, price = await run_to_end(request, gen)
    choices = [{"text": c.text, "index": c.index,
                "logprobs": completion_logprobs(c.logprobs) if ask.sampling.logprobs else None,
                "finish_reason": finish(c.finish_reason)} for c in fold(chunks, ask.choices)]
    return JSONResponse({"id": cid, "object": "text_completion", "created": created, "model": gen.model,
                         "system_fingerprint": None, "choices": choices, "usage": usage_json(final.usage)},
                        headers={"x-request-id": ctx.request_id, "x-reverb-price": str(price)})


async def _sse(gen: Generation, first: Chunk, cid: str, created: int, include_usage: bool, ask: Ask):
    def chunk(index: int, text: str, finish_reason: str | None, logprobs=None) -> dict:
        out = {"id": cid, "object": "text_completion", "created": created, "model": gen.model,
               "system_fingerprint": None,
               "choices": [{"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}]}
        if include_usage:
            out["usage"] = None
        return out

    ends: dict[int, Chunk] = {}
    offsets = [0] * ask.choices
    current = first
    while True:
        if current.text or current.logprobs:
            lp = completion_logprobs(current.logprobs, offsets[current.index]) if ask.sampling.logprobs else None
            offsets[current.index] += len(current.text)
            yield event(chunk(current.index, current.text, None, lp))
        if current.finish_reason is not None:
            ends[current.index] = current
        if len(ends) == gen.choices:
            break
        current = await anext(gen)
    final = gen.final
    failure = await stream_failure(gen, final.error)
    if failure is not None:
        yield event(openai_body(failure)[1])
        return
    for i in sorted(ends):
        yield event(chunk(i, "", finish(ends[i].finish_reason)))
    if include_usage:
        yield event({"id": cid, "object": "text_completion", "created": created, "model": gen.model,
                     "system_fingerprint": None, "choices": [], "usage": usage_json(final.usage)})
    yield DONE
