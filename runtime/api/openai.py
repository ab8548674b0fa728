"""The OpenAI dialect: /v1/chat/completions (also /api/v1/...) and /v1/models, /v1/models/{id}.

The chat renderers: a generation's chunks as a chat.completion or as chat.completion.chunk events (handler.py
runs the request; a model behind an upstream is rendered by passthrough.py). Every Chat Completions field is
honoured or refused with 400 naming it (wire.py); fields that are not OpenAI's (top_k, min_p, ...) are accepted.
"""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import ModelNotFound, quote
from ..service import Service
from ..types import Chunk
from . import passthrough, wire
from .choices import chat_logprobs, finish, per_choice, tool_call_deltas
from .handler import Answer, Dialect, Renderers
from .sse import SSE, event, events


def usage_json(usage, prediction: bool = False) -> dict:
    """OpenAI's usage object; with a prediction, its accepted and rejected tokens (rejected ones are in
    completion_tokens too: they are billed)."""
    out = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
           "total_tokens": usage.total_tokens}
    if prediction:
        out["completion_tokens_details"] = {"accepted_prediction_tokens": usage.accepted_prediction_tokens,
                                            "rejected_prediction_tokens": usage.rejected_prediction_tokens}
    return out


def _whole(a: Answer, chunks: list[Chunk], final: Chunk, price: int) -> dict:
    return {"id": a.id, "object": "chat.completion", "created": a.created, "model": a.gen.model,
            "system_fingerprint": None,
            "choices": [_choice(c, a.ask.sampling.logprobs) for c in per_choice(chunks, a.ask.choices)],
            "usage": usage_json(final.usage, a.ask.prediction is not None)}


def _choice(c, logprobs: bool) -> dict:
    message = {"role": "assistant", "content": c.content, "refusal": None}
    if c.reasoning:   # a thinking model's thought, as DeepSeek's API and vLLM send it (docs/reasoning.md)
        message["reasoning_content"] = c.reasoning
    if c.calls:
        message["tool_calls"] = c.calls
    return {"index": c.index, "message": message, "logprobs": chat_logprobs(c.logprobs) if logprobs else None,
            "finish_reason": finish(c.finish_reason)}


class _Frames:
    """chat.completion.chunk events: each choice opens with its role, then deltas, then its finish."""

    def __init__(self, a: Answer):
        self.a = a
        # Plain content events differ only in their text: build the bytes around it once (once per token).
        self.head, self.tail = event(self.frame(0, {"content": "\x00"}, None)).split(b'"\\u0000"')

    def frame(self, index: int, delta: dict, finish_reason: str | None, logprobs=None) -> dict:
        a = self.a
        out = {"id": a.id, "object": "chat.completion.chunk", "created": a.created, "model": a.gen.model,
               "system_fingerprint": None,
               "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}
        if a.render.include_usage:
            out["usage"] = None
        return out

    def open(self, first: Chunk):
        return [event(self.frame(i, {"role": "assistant", "content": ""}, None)) for i in range(self.a.ask.choices)]

    def chunk(self, current: Chunk) -> bytes | None:
        if current.logprobs or current.tool_calls or current.index or current.reasoning:
            delta: dict = {"reasoning_content": current.reasoning} if current.reasoning else {}
            if current.text:
                delta["content"] = current.text
            if current.tool_calls:
                delta["tool_calls"] = tool_call_deltas(current.tool_calls)
            if delta or current.logprobs:
                return event(self.frame(current.index, delta, None,
                                        chat_logprobs(current.logprobs) if current.logprobs else None))
        elif current.text:
            return self.head + json.dumps(current.text, ensure_ascii=False).encode("utf-8") + self.tail
        return None

    def finish(self, ends: dict[int, Chunk]):
        return [event(self.frame(i, {}, finish(ends[i].finish_reason))) for i in sorted(ends)]

    def usage(self, usage) -> dict:
        a = self.a
        return {"id": a.id, "object": "chat.completion.chunk", "created": a.created, "model": a.gen.model,
                "system_fingerprint": None, "choices": [], "usage": usage_json(usage, a.ask.prediction is not None)}


def _stream(a: Answer, first: Chunk):
    return events(a.gen, first, _Frames(a), a.render.include_usage)


CHAT = Dialect(wire.CHAT, "chatcmpl-", Renderers(SSE, _stream, _whole),
               relay=Renderers(SSE, passthrough.stream, passthrough.whole))



def _model_json(name: str, backend) -> dict:
    # owned_by: "reverb" for a model served here, else the upstream's provider; provider names what runs it.
    info = backend.info
    return {"id": name, "object": "model", "created": info.created,
            "owned_by": info.provider if info.passthrough else "reverb", "provider": info.provider}


def _unloaded_json(name: str) -> dict:
    # a model served on demand (--on-demand) that is not loaded right now: loaded by its first request
    return {"id": name, "object": "model", "created": 0, "owned_by": "reverb", "provider": "llama.cpp"}


async def list_models(request: Request) -> JSONResponse:
    """The loaded models this key (and its team) may use."""
    service: Service = request.state.service
    account = request.state.ctx.account
    loaded = service.backends
    allowed = (lambda n: True) if account is None else account.may_use
    return JSONResponse({"object": "list", "data": [_model_json(n, b) for n, b in loaded.items() if allowed(n)]
                         + [_unloaded_json(n) for n in service.models.servable if n not in loaded and allowed(n)]})


async def get_model(request: Request) -> JSONResponse:
    """One loaded model; 404 model_not_found for any other name (never a fallback)."""
    service: Service = request.state.service
    name = request.path_params["model"]
    backend = service.backends.get(name)
    account = request.state.ctx.account
    if account is not None and not account.may_use(name):
        backend = None
    elif backend is None and name in service.models.servable:
        return JSONResponse(_unloaded_json(name))
    if backend is None:
        raise ModelNotFound(f"The model '{quote(name)}' does not exist or is not loaded on this server", param="model",
                            model=None)
    return JSONResponse(_model_json(name, backend))
