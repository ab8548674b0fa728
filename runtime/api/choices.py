"""Chunks -> per-choice answers, and the wire forms both dialects share: finish reasons, tool calls, logprobs.

A generation interleaves the chunks of its choices (``Chunk.index``); the blocking answers sort them per choice
here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..types import Chunk, FinishReason, TokenLogprob, ToolCallDelta

_FINISH = {FinishReason.LENGTH: "length", FinishReason.TOOL_CALLS: "tool_calls"}


def finish(reason: FinishReason | None) -> str:
    return _FINISH.get(reason, "stop")


@dataclass
class Choice:
    index: int
    parts: list[str] = field(default_factory=list)
    thoughts: list[str] = field(default_factory=list)    # a thinking model's reasoning (Chunk.reasoning)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    calls: list[dict] = field(default_factory=list)      # OpenAI tool_calls, arguments accumulated
    finish_reason: FinishReason | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def reasoning(self) -> str:
        return "".join(self.thoughts)

    @property
    def content(self) -> str | None:
        """The message content: null when the answer is only tool calls (as OpenAI sends it)."""
        text = self.text
        return None if self.calls and not text else text

    def add(self, chunk: Chunk) -> None:
        if chunk.text:
            self.parts.append(chunk.text)
        if chunk.reasoning:
            self.thoughts.append(chunk.reasoning)
        self.logprobs.extend(chunk.logprobs)
        for d in chunk.tool_calls:
            if d.id is not None:
                self.calls.append({"id": d.id, "type": "function", "function": {"name": d.name, "arguments": ""}})
            self.calls[d.index]["function"]["arguments"] += d.arguments
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason


def per_choice(chunks: list[Chunk], count: int) -> list[Choice]:
    choices = [Choice(i) for i in range(count)]
    for chunk in chunks:
        choices[chunk.index].add(chunk)
    return choices


def tool_call_deltas(deltas: tuple[ToolCallDelta, ...]) -> list[dict]:
    """OpenAI's streaming form: index, id, type and name first; then arguments in pieces."""
    out = []
    for d in deltas:
        if d.id is not None:
            out.append({"index": d.index, "id": d.id, "type": "function",
                        "function": {"name": d.name, "arguments": d.arguments}})
        else:
            out.append({"index": d.index, "function": {"arguments": d.arguments}})
    return out


def chat_logprobs(entries: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> dict:
    """Chat Completions' ``logprobs``: {content: [{token, logprob, bytes, top_logprobs}], refusal: null}."""
    def one(text: str, raw: bytes, lp: float) -> dict:
        return {"token": text, "logprob": lp, "bytes": list(raw)}
    return {"content": [{**one(e.token, e.bytes, e.logprob), "top_logprobs": [one(*t) for t in e.top]}
                        for e in entries], "refusal": None}


def completion_logprobs(entries: list[TokenLogprob] | tuple[TokenLogprob, ...], offset: int = 0) -> dict:
    """Legacy Completions' ``logprobs``: parallel lists, ``top_logprobs`` as {token: logprob} maps."""
    offsets, pos = [], offset
    for e in entries:
        offsets.append(pos)
        pos += len(e.token)
    return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t[0]: t[2] for t in e.top} for e in entries], "text_offset": offsets}
