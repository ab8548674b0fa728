"""The legacy Completions dialect: POST /v1/completions (raw text in, text out; no chat template).

``prompt`` is a string or a list of strings (each gets ``n`` choices, indexed prompt * n + i); ``echo`` and
``suffix`` are refused, ``best_of`` is accepted only equal to ``n``; ``logprobs`` (0-5) asks for that many
alternatives per token. Billing, logging and streaming are those of chat completions.
"""

from __future__ import annotations

from ..types import Chunk
from . import wire
from .choices import completion_logprobs, finish, per_choice
from .handler import Answer, Dialect, Renderers
from .openai import usage_json
from .sse import SSE, event, events


def _whole(a: Answer, chunks: list[Chunk], final: Chunk, price: int) -> dict:
    choices = [{"text": c.text, "index": c.index,
                "logprobs": completion_logprobs(c.logprobs) if a.ask.sampling.logprobs else None,
                "finish_reason": finish(c.finish_reason)} for c in per_choice(chunks, a.ask.choices)]
    return {"id": a.id, "object": "text_completion", "created": a.created, "model": a.gen.model,
            "system_fingerprint": None, "choices": choices, "usage": usage_json(final.usage)}


class _Frames:
    """text_completion events: text (and logprobs, offset per choice) as it comes, then each choice's finish."""

    def __init__(self, a: Answer):
        self.a = a
        self.offsets = [0] * a.ask.choices

    def frame(self, index: int, text: str, finish_reason: str | None, logprobs=None) -> dict:
        a = self.a
        out = {"id": a.id, "object": "text_completion", "created": a.created, "model": a.gen.model,
               "system_fingerprint": None,
               "choices": [{"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}]}
        if a.render.include_usage:
            out["usage"] = None
        return out

    def open(self, first: Chunk):
        return ()

    def chunk(self, current: Chunk) -> bytes | None:
        if not (current.text or current.logprobs):
            return None
        lp = (completion_logprobs(current.logprobs, self.offsets[current.index])
              if self.a.ask.sampling.logprobs else None)
        self.offsets[current.index] += len(current.text)
        return event(self.frame(current.index, current.text, None, lp))

    def finish(self, ends: dict[int, Chunk]):
        return [event(self.frame(i, "", finish(ends[i].finish_reason))) for i in sorted(ends)]

    def usage(self, usage) -> dict:
        a = self.a
        return {"id": a.id, "object": "text_completion", "created": a.created, "model": a.gen.model,
                "system_fingerprint": None, "choices": [], "usage": usage_json(usage)}


def _stream(a: Answer, first: Chunk):
    return events(a.gen, first, _Frames(a), a.render.include_usage)


COMPLETIONS = Dialect(wire.COMPLETIONS, "cmpl-", Renderers(SSE, _stream, _whole))
