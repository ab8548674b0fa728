"""Anthropic's Messages API: ``POST /v1/messages`` (its renderers over handler.py), ``POST
/v1/messages/count_tokens``, and the Anthropic shape of ``GET /v1/models`` for a client that sends
``anthropic-version``. The request's fields are wire.py's ``messages`` rows (docs/anthropic.md).

One renderer pair serves a local model and one behind an upstream: a chunk's pieces (thinking, text, tool-call
deltas) are read from the Chunk, or from the upstream's chat completion event it carries (chatbody.py sent the
upstream a chat request). Streaming sends Anthropic's named SSE events; as for chat, the events that end the
message (the last ``content_block_stop``, ``message_delta`` with the stop reason and usage, ``message_stop``) are
sent only once the ledger has the request's row, and a failure after the first event is one ``error`` event.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Iterable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..service import Service
from ..types import Chunk, FinishReason, ToolCallDelta
from . import openai, wire
from .body import read_json
from .errors import anthropic_body
from .handler import Answer, Dialect, Renderers
from .sse import SSE
from .sse import event as sse_event
from .body import keep_body
from .stream import stream_failure


def frame(kind: str, payload: dict) -> bytes:
    """One named SSE event, as Anthropic sends them: ``event: <type>`` then ``data: <json>``."""
    return sse_event(payload, kind)


def _emit(payload: dict) -> bytes:
    return frame(payload["type"], payload)


def pieces(chunk: Chunk) -> tuple[str, str, tuple[ToolCallDelta, ...], bool]:
    """(thinking, text, tool-call deltas, whether the upstream said it called tools) of one chunk."""
    event = chunk.passthrough
    if event is None:
        return chunk.reasoning, chunk.text, chunk.tool_calls, False
    thinking, text, calls, called = "", "", [], False
    for choice in event.get("choices") or ():
        if choice.get("index", 0) != 0:
            continue
        called = called or choice.get("finish_reason") == "tool_calls"
        delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
        for key in ("reasoning_content", "reasoning"):
            if isinstance(delta.get(key), str):
                thinking += delta[key]
        if isinstance(delta.get("content"), str):
            text += delta["content"]
        for call in delta.get("tool_calls") or ():
            fn = call.get("function") if isinstance(call, dict) and isinstance(call.get("function"), dict) else {}
            index = call.get("index", 0) if isinstance(call, dict) else 0
            args = fn.get("arguments") if isinstance(fn.get("arguments"), str) else ""
            calls.append(ToolCallDelta(index if isinstance(index, int) else 0, call.get("id") or None,
                                       fn.get("name"), args))
    return thinking, text, tuple(calls), called


def stop_reason(final: Chunk, called: bool) -> tuple[str, str | None]:
    """Anthropic's (stop_reason, stop_sequence) for the request's end."""
    if final.finish_reason is FinishReason.LENGTH:
        return "max_tokens", None
    if called or final.finish_reason is FinishReason.TOOL_CALLS:
        return "tool_use", None
    if final.stop is not None:
        return "stop_sequence", final.stop
    return "end_turn", None


def _usage(final: Chunk) -> dict:
    u = final.usage
    return {"input_tokens": u.prompt_tokens if u else 0, "output_tokens": u.completion_tokens if u else 0}


def _input(arguments: str) -> dict:
    """A tool call's arguments as the object Anthropic's ``input`` is (an answer cut off by max_tokens may leave
    them unfinished: then empty)."""
    try:
        value = json.loads(arguments) if arguments else {}
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _message(a: Answer, content: list, reason: str | None, sequence: str | None, usage: dict) -> dict:
    return {"id": a.id, "type": "message", "role": "assistant", "model": a.gen.model, "content": content,
            "stop_reason": reason, "stop_sequence": sequence, "usage": usage}


def _whole(a: Answer, chunks: list[Chunk], final: Chunk, price: int) -> dict:
    thinking, text, calls, called = [], [], {}, False
    for chunk in chunks:
        t, x, deltas, c = pieces(chunk)
        thinking.append(t)
        text.append(x)
        called = called or c
        for d in deltas:
            call = calls.setdefault(d.index, {"id": d.id, "name": d.name, "arguments": ""})
            call["id"], call["name"] = call["id"] or d.id, call["name"] or d.name
            call["arguments"] += d.arguments
    content: list[dict] = []
    if "".join(thinking):
        content.append({"type": "thinking", "thinking": "".join(thinking), "signature": ""})
    if "".join(text) or not calls:
        content.append({"type": "text", "text": "".join(text)})
    for index in sorted(calls):
        c = calls[index]
        content.append({"type": "tool_use", "id": c["id"] or f"toolu_{index}", "name": c["name"] or "",
                        "input": _input(c["arguments"])})
    reason, sequence = stop_reason(final, called or bool(calls))
    return _message(a, content, reason, sequence, _usage(final))


class _Blocks:
    """The content blocks of a streamed message: each piece opens the block it belongs in (closing the one
    before), then its delta."""

    def __init__(self):
        self.index = -1
        self.kind: str | None = None
        self.calls: dict[int, int] = {}     # tool call index -> its block
        self.called = False

    def _open(self, kind: str, block: dict) -> list[bytes]:
        out = self.close()
        self.index += 1
        self.kind = kind
        return out + [_emit({"type": "content_block_start", "index": self.index, "content_block": block})]

    def close(self) -> list[bytes]:
        if self.kind is None:
            return []
        self.kind = None
        return [_emit({"type": "content_block_stop", "index": self.index})]

    def _delta(self, delta: dict) -> bytes:
        return _emit({"type": "content_block_delta", "index": self.index, "delta": delta})

    def feed(self, chunk: Chunk) -> list[bytes]:
        thinking, text, calls, called = pieces(chunk)
        self.called = self.called or called or bool(calls)
        out: list[bytes] = []
        if thinking:
            if self.kind != "thinking":
                out += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            out.append(self._delta({"type": "thinking_delta", "thinking": thinking}))
        if text:
            if self.kind != "text":
                out += self._open("text", {"type": "text", "text": ""})
            out.append(self._delta({"type": "text_delta", "text": text}))
        for d in calls:
            if d.index not in self.calls or self.kind != f"tool{d.index}":
                if d.index in self.calls:      # a call's pieces after another block: Anthropic has no such thing
                    continue
                out += self._open(f"tool{d.index}", {"type": "tool_use", "id": d.id or f"toolu_{d.index}",
                                                     "name": d.name or "", "input": {}})
                self.calls[d.index] = self.index
            if d.arguments:
                out.append(self._delta({"type": "input_json_delta", "partial_json": d.arguments}))
        return out


async def _stream(a: Answer, first: Chunk):
    gen = a.gen
    start = _message(a, [], None, None, {"input_tokens": gen.prompt_tokens, "output_tokens": 0})
    yield _emit({"type": "message_start", "message": start})
    yield _emit({"type": "ping"})
    blocks = _Blocks()
    current = first
    while True:
        for data in blocks.feed(current):
            yield data
        if current.finish_reason is not None and gen.final is not None:
            break
        current = await anext(gen)
    final = gen.final
    failure = await stream_failure(gen, final.error)
    if failure is not None:
        yield _emit(anthropic_body(failure)[1])
        return
    for data in _end(blocks, final):
        yield data


def _end(blocks: _Blocks, final: Chunk) -> Iterable[bytes]:
    reason, sequence = stop_reason(final, blocks.called)
    yield from blocks.close()
    yield _emit({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
                 "usage": _usage(final)})
    yield _emit({"type": "message_stop"})


RENDERERS = Renderers(SSE, _stream, _whole)
MESSAGES = Dialect(wire.MESSAGES, "msg_", RENDERERS, relay=RENDERERS)


async def count_tokens(request: Request) -> JSONResponse:
    """``{input_tokens}``: the prompt as the model reads it (its template and tokenizer; an estimate for a model
    behind an upstream). Free, and logged as a request with no charge."""
    service: Service = request.state.service
    body = await read_json(request, service.settings)
    body = {k: v for k, v in body.items() if k != "stream"}
    body.setdefault("max_tokens", 1)         # nothing is generated: the field Anthropic leaves out here
    ask, _ = wire.parse(body, wire.MESSAGES, service.settings)
    return JSONResponse({"input_tokens": await service.count_tokens(keep_body(request, body), ask)})


def _anthropic(model: dict) -> dict:
    created = datetime.fromtimestamp(model.get("created") or 0, timezone.utc)
    return {"type": "model", "id": model["id"], "display_name": model["id"],
            "created_at": created.isoformat().replace("+00:00", "Z")}


def _for_anthropic(request: Request) -> bool:
    return "anthropic-version" in request.headers


async def list_models(request: Request) -> Response:
    """OpenAI's list, or Anthropic's (``{data, has_more, first_id, last_id}``) for a client that sends
    ``anthropic-version`` (the Anthropic SDKs always do)."""
    listed = await openai.list_models(request)
    if not _for_anthropic(request):
        return listed
    data = [_anthropic(m) for m in json.loads(listed.body)["data"]]
    return JSONResponse({"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                         "last_id": data[-1]["id"] if data else None})


async def get_model(request: Request) -> Response:
    """One model, in Anthropic's shape for a client that sends ``anthropic-version``."""
    found = await openai.get_model(request)
    return JSONResponse(_anthropic(json.loads(found.body))) if _for_anthropic(request) else found
