"""The OpenAI dialect for a model behind an OpenAI-compatible upstream (models.toml ``source = "openai"``).

The client's request goes upstream unchanged (``Ask.extra``): tools, response_format, logprobs, n and fields
reverb has never heard of. Only what reverb itself needs is checked here: the model, the messages' shape and
size, max_tokens (the credit hold) and n. The upstream's choices come back unchanged too: each upstream event
arrives as a Chunk whose ``passthrough`` is the event, and is relayed with reverb's id, time and the public model
name. Relaying events, rather than modelling every field in Chunk, is what lets tool_calls deltas, logprobs and
refusals reach the client exactly as the upstream sent them, while the service, the ledger and the gateway
dialect keep reading only text, finish and usage.

As for local models, a stream's events that carry a finish_reason, its usage and ``[DONE]`` are sent only after
the ledger row is written, and a non-streaming answer is folded from the same events (deltas merged as the
official SDK merges them). A local model standing in as a fallback serves only plain chat requests (``PLAIN``);
its text arrives as ordinary chunks and is rendered in the same shape.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import replace
from types import MappingProxyType
from typing import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import InvalidRequest
from ..generation import Generation
from ..request import Ask
from ..types import Chunk, FinishReason, Message, SamplingParams
from . import params as P
from .errors import openai_body
from .sse import DONE, event
from .stream import cancel_on_disconnect, keep_body, settled_quietly, stream_failure, stream_response

OWN = ("model", "stream", "stream_options")      # reverb's to set on the upstream request
# Fields the local engine's text answer fully covers: only requests limited to these may fall back to it.
PLAIN = {"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
         "top_p", "top_k", "min_p", "seed", "stop", "presence_penalty", "frequency_penalty", "logit_bias", "user",
         "n"}
MAX_N = 128
SET_KEYS = {"index", "type", "role"}              # replaced, never concatenated, when deltas merge


def serves(service, body: dict) -> bool:
    """Whether the request names a model that an upstream serves."""
    spec = service.registry.specs.get(body.get("model")) if isinstance(body.get("model"), str) else None
    return spec is not None and spec.upstream


def parse(body: dict, settings, local_parse: Callable) -> tuple[Ask, bool]:
    """Wire JSON -> (Ask, include_usage) for an upstream. Raises InvalidRequest naming ``param``."""
    model = P.model(body)
    stream = P.boolean(body, "stream", False)
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise InvalidRequest("'stream_options' must be an object", param="stream_options")
    include_usage = P.boolean(opts or {}, "include_usage", False, param="stream_options.include_usage")
    extra = {k: v for k, v in body.items() if k not in OWN}   # its text is UTF-8 clean: body.py checks that
    messages = _messages(body.get("messages"), settings)
    max_tokens = P.integer(body, "max_completion_tokens", 1, settings.max_tokens_cap, None)
    if max_tokens is None:
        max_tokens = P.integer(body, "max_tokens", 1, settings.max_tokens_cap, None)
    P.integer(body, "n", 1, MAX_N, 1)
    ask = Ask(model=model, messages=messages, sampling=SamplingParams(max_tokens=max_tokens), stream=stream)
    # n > 1 is left to the upstream: a local job delivers its choices as separate streams, which this relay does
    # not render (it relays one upstream stream), so such a request gets no local fallback.
    local = set(body) <= PLAIN and body.get("n") in (None, 1)
    if local:
        try:  # the local view of the same request: what a local fallback would run
            ask = local_parse(body, settings)[0]
        except InvalidRequest:
            local = False
    return replace(ask, extra=MappingProxyType(extra), local=local), include_usage


def _messages(value, settings) -> tuple[Message, ...]:
    """The messages' shape and size; their content as text, for the token estimate."""
    if not isinstance(value, list) or not value:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    if len(value) > settings.max_messages:
        raise InvalidRequest(f"'messages' has more than {settings.max_messages} messages", param="messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InvalidRequest(f"'messages[{i}]' must be an object with a string 'role'", param=f"messages[{i}]")
        content = m.get("content")
        text = content if isinstance(content, str) else "" if content is None else json.dumps(content)
        if len(text) > settings.max_message_chars:
            raise InvalidRequest(f"'messages[{i}].content' is longer than {settings.max_message_chars} characters",
                                 param=f"messages[{i}].content")
        out.append(Message(m["role"], text))
    return tuple(out)


async def chat_completions(request: Request, body: dict, local_parse: Callable) -> object:
    service = request.state.service
    ask, include_usage = parse(body, service.settings, local_parse)
    ctx = keep_body(request, body)
    gen = await service.start(ctx, ask)
    request.state.generation = gen
    ids = ("chatcmpl-" + ctx.request_id.removeprefix("req_"), int(time.time()))
    if ask.stream:
        return stream_response(request, gen, "text/event-stream; charset=utf-8",
                               lambda first: _sse(gen, first, ids, include_usage))
    async with cancel_on_disconnect(request.receive, gen):
        chunks = [chunk async for chunk in gen]
    final = chunks[-1]
    if final.error is not None:
        await settled_quietly(gen)
        raise final.error
    price = (await gen.settled).price
    return JSONResponse(_completion(gen, chunks, ids), headers={"x-request-id": ctx.request_id,
                                                                "x-reverb-price": str(price)})


def _frame(gen: Generation, ids: tuple[str, int], choices: list, include_usage: bool, source=None) -> dict:
    out = {k: v for k, v in (source or {}).items() if k not in ("choices", "usage")}
    out.update(id=ids[0], object="chat.completion.chunk", created=ids[1], model=gen.model, choices=choices)
    out.setdefault("system_fingerprint", None)
    if include_usage:
        out["usage"] = None
    return out


def _finish(reason: FinishReason | None) -> str:
    return "length" if reason is FinishReason.LENGTH else "stop"


async def _sse(gen: Generation, first: Chunk, ids: tuple[str, int], include_usage: bool):
    held = []                       # events with a finish_reason: sent once the ledger has the row
    relayed = first.passthrough is not None
    if not relayed:                 # a local fallback answers: open its message as the local dialect does
        yield event(_frame(gen, ids, [_choice({"role": "assistant", "content": ""})], include_usage))
    current = first
    while True:
        if current.passthrough is not None:
            choices = current.passthrough["choices"]
            frame = _frame(gen, ids, choices, include_usage, current.passthrough)
            if any(c.get("finish_reason") for c in choices):
                held.append(frame)
            else:
                yield event(frame)
        elif current.text:
            yield event(_frame(gen, ids, [_choice({"content": current.text})], include_usage))
        if current.finish_reason is not None:
            break
        current = await anext(gen)
    failure = await stream_failure(gen, current.error)
    if failure is not None:
        yield event(openai_body(failure)[1])
        return
    for frame in held or [_frame(gen, ids, [_choice({}, _finish(current.finish_reason))], include_usage)]:
        yield event(frame)
    if include_usage:
        u = current.usage
        yield event({**_frame(gen, ids, [], False), "usage": {
            "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens}})
    yield DONE


def _choice(delta: dict, finish: str | None = None) -> dict:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


def _completion(gen: Generation, chunks: list[Chunk], ids: tuple[str, int]) -> dict:
    """The chat.completion folded from the stream: per choice, the deltas merged into one message."""
    final = chunks[-1]
    merged: dict[int, dict] = {}
    fingerprint = None
    for chunk in chunks:
        if chunk.passthrough is None:
            if chunk.text:
                merge(merged.setdefault(0, {"index": 0}), {"delta": {"content": chunk.text}})
            continue
        fingerprint = chunk.passthrough.get("system_fingerprint", fingerprint)
        for choice in chunk.passthrough["choices"]:
            index = choice.get("index", 0)
            merge(merged.setdefault(index if isinstance(index, int) else 0, {"index": index}), choice)
    choices = []
    for index in sorted(merged) or [0]:
        c = merged.get(index, {})
        message = {"role": "assistant", "content": None, "refusal": None, **c.get("delta", {})}
        if message["content"] is None and not message.get("tool_calls"):
            message["content"] = ""
        for call in message.get("tool_calls") or []:
            if isinstance(call, dict):
                call.pop("index", None)
        choices.append({"index": index, "message": message, "logprobs": c.get("logprobs"),
                        "finish_reason": c.get("finish_reason") or _finish(final.finish_reason)})
    u = final.usage
    return {"id": ids[0], "object": "chat.completion", "created": ids[1], "model": gen.model,
            "system_fingerprint": fingerprint, "choices": choices,
            "usage": {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                      "total_tokens": u.total_tokens}}


def merge(acc: dict, delta: dict) -> dict:
    """Merge one streamed delta into ``acc``, as the official SDK accumulates a stream: strings concatenate
    (except index, type and role, and an id or name sent again unchanged), objects merge, lists of objects with
    an ``index`` merge by it (tool_calls), other lists extend (logprobs content)."""
    for key, value in delta.items():
        old = acc.get(key)
        if old is None:
            acc[key] = copy.deepcopy(value)
        elif value is None:
            continue
        elif key in SET_KEYS or (key in ("id", "name") and old == value):
            acc[key] = value
        elif isinstance(old, str) and isinstance(value, str):
            acc[key] = old + value
        elif isinstance(old, dict) and isinstance(value, dict):
            merge(old, value)
        elif isinstance(old, list) and isinstance(value, list):
            for item in value:
                index = item.get("index") if isinstance(item, dict) else None
                target = next((o for o in old if isinstance(o, dict) and isinstance(index, int)
                               and o.get("index") == index), None)
                if target is not None:
                    merge(target, item)
                else:
                    old.append(copy.deepcopy(item))
        else:
            acc[key] = value
    return acc
