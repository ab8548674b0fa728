"""The OpenAI dialect for a model behind an OpenAI-compatible upstream (models.toml ``source = "openai"``).

The client's request goes upstream unchanged (``Ask.extra``): tools, response_format, logprobs, n and fields
reverb has never heard of. Only what reverb itself needs is checked (wire.py's relay rows): the model, the
messages' shape and size, max_tokens (the credit hold) and n. The upstream's choices come back unchanged too:
each upstream event arrives as a Chunk whose ``passthrough`` is the event, and is relayed with reverb's id, time
and the public model name. Relaying events, rather than modelling every field in Chunk, is what lets tool_calls
deltas, logprobs and refusals reach the client exactly as the upstream sent them, while the service, the ledger
and the gateway dialect keep reading only text, finish and usage.

As for local models, a stream's events that carry a finish_reason, its usage and ``[DONE]`` are sent only after
the ledger row is written, and a non-streaming answer is folded from the same events (deltas merged as the
official SDK merges them). A local model standing in as a fallback serves only plain chat requests (the rows
marked ``fallback`` in wire.py); its text arrives as ordinary chunks and is rendered in the same shape.
"""

from __future__ import annotations

import copy

from ..generation import Generation
from ..types import Chunk, FinishReason
from .handler import Answer
from .sse import event, events

SET_KEYS = {"index", "type", "role"}              # replaced, never concatenated, when deltas merge


def whole(a: Answer, chunks: list[Chunk], final: Chunk, price: int) -> dict:
    return _completion(a.gen, chunks, (a.id, a.created))


def stream(a: Answer, first: Chunk):
    return events(a.gen, first, _Frames(a), a.render.include_usage)


def _frame(gen: Generation, ids: tuple[str, int], choices: list, include_usage: bool, source=None) -> dict:
    out = {k: v for k, v in (source or {}).items() if k not in ("choices", "usage")}
    out.update(id=ids[0], object="chat.completion.chunk", created=ids[1], model=gen.model, choices=choices)
    out.setdefault("system_fingerprint", None)
    if include_usage:
        out["usage"] = None
    return out


def _finish(reason: FinishReason | None) -> str:
    return "length" if reason is FinishReason.LENGTH else "stop"


class _Frames:
    """The upstream's events relayed with reverb's id, time and model name; those carrying a finish_reason are
    held until the ledger has the row. A local fallback's text is framed as the local dialect does."""

    def __init__(self, a: Answer):
        self.gen, self.ids, self.include_usage = a.gen, (a.id, a.created), a.render.include_usage
        self.held: list[dict] = []

    def open(self, first: Chunk):
        if first.passthrough is not None:
            return ()
        return [event(_frame(self.gen, self.ids, [_choice({"role": "assistant", "content": ""})],
                             self.include_usage))]

    def chunk(self, current: Chunk) -> bytes | None:
        if current.passthrough is not None:
            choices = current.passthrough["choices"]
            frame = _frame(self.gen, self.ids, choices, self.include_usage, current.passthrough)
            if any(c.get("finish_reason") for c in choices):
                self.held.append(frame)
                return None
            return event(frame)
        if current.text:
            return event(_frame(self.gen, self.ids, [_choice({"content": current.text})], self.include_usage))
        return None

    def finish(self, ends: dict[int, Chunk]):
        last = next(iter(ends.values()))
        frames = self.held or [_frame(self.gen, self.ids, [_choice({}, _finish(last.finish_reason))],
                                      self.include_usage)]
        return [event(f) for f in frames]

    def usage(self, u) -> dict:
        return {**_frame(self.gen, self.ids, [], False), "usage": {
            "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens}}


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
