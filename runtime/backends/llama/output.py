"""One choice's output as the client sees it: token bytes -> Chunks of text, tool-call pieces and logprobs.

Text is UTF-8 safe and stop strings are held back (``TextStream``). When the request has tools, the text goes through
an incremental tool-call parser, so ``<tool_call>`` blocks leave as ``tool_calls`` pieces (name first, arguments in
pieces) and only the rest is content.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...types import Chunk, TokenLogprob, ToolCallDelta
from .textstream import TextStream


@dataclass(frozen=True)
class Constraint:
    """What a request asks of its answers, compiled by the backend: ``grammar`` for the engine's sampler (None:
    unconstrained) and, when the request has tools, a factory of tool-call parsers (one per choice)."""

    grammar: object = None
    tool_parser: object = None      # () -> an incremental parser with feed(text) / finish() -> OpenAI deltas


class ChoiceOutput:
    def __init__(self, index: int, stop: tuple[str, ...], constraint: Constraint | None = None):
        self.index = index
        self._text = TextStream(stop)
        self._parser = constraint.tool_parser() if constraint is not None and constraint.tool_parser else None
        self.called = False  # whether any tool call was produced

    @property
    def stopped(self) -> bool:
        return self._text.stopped

    def feed(self, piece: bytes, logprob: TokenLogprob | None = None) -> Chunk | None:
        """A sampled token's bytes (and its logprob when asked); the chunk to send now, if any."""
        return self._chunk(self._text.feed(piece), (logprob,) if logprob is not None else (), final=False)

    def flush(self) -> Chunk | None:
        """The rest at the end of generation (held text, an unfinished tool-call block as content)."""
        return self._chunk(self._text.flush(), (), final=True)

    def _chunk(self, text: str, logprobs: tuple, final: bool) -> Chunk | None:
        calls: tuple[ToolCallDelta, ...] = ()
        if self._parser is not None:
            deltas = self._parser.feed(text) if text else []
            if final:
                deltas += self._parser.finish()
            text = "".join(d["content"] for d in deltas if "content" in d)
            calls = tuple(_delta(c) for d in deltas for c in d.get("tool_calls", ()))
            self.called = self.called or bool(calls)
        if text or logprobs or calls:
            return Chunk(text=text, index=self.index, logprobs=logprobs, tool_calls=calls)
        return None


def _delta(call: dict) -> ToolCallDelta:
    fn = call.get("function", {})
    return ToolCallDelta(index=call["index"], id=call.get("id"), name=fn.get("name") if "id" in call else None,
                         arguments=fn.get("arguments", ""))
