"""One choice's output as the client sees it: token bytes -> Chunks of text, tool-call pieces and logprobs.

Text is UTF-8 safe and stop strings are held back (``TextStream``). A thinking model's ``<think>`` text is split out
into ``Chunk.reasoning`` next (reasoning.py), so stop strings apply to the whole text and the rest only to the answer.
When the request has tools, the answer goes through an incremental tool-call parser, so ``<tool_call>`` blocks leave
as ``tool_calls`` pieces (index, id and name first, then the arguments in pieces) and only the rest is content.

Small models given parallel calls tend to repeat the same call until max_tokens, leaving the last one cut off. So the
first call streams as it is written, every later call is held until it is complete (one cut off by max_tokens is
dropped), and a call identical to an earlier one (same name, same arguments) ends the answer instead of being sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ...types import Chunk, TokenLogprob, ToolCallDelta
from .reasoning import OPENED, ThinkSplitter
from .textstream import TextStream


@dataclass(frozen=True)
class Constraint:
    """What a request asks of its answers, compiled by the backend: ``grammar`` for the engine's sampler (None:
    unconstrained) and, when the request has tools, a factory of tool-call parsers (one per choice). ``reasoning``
    says how a thinking template's answers are split (reasoning.OPENED / LEADING; None: not at all)."""

    grammar: object = None
    tool_parser: object = None      # () -> grammar.ToolCallParser (feed(text) / finish() -> OpenAI deltas)
    reasoning: str | None = None


class ChoiceOutput:
    def __init__(self, index: int, stop: tuple[str, ...], constraint: Constraint | None = None):
        self.index = index
        self._text = TextStream(stop)
        self._parser = constraint.tool_parser() if constraint is not None and constraint.tool_parser else None
        mode = constraint.reasoning if constraint is not None else None
        self._think = ThinkSplitter(opened=mode == OPENED) if mode else None
        self._held: list[dict] = []  # pieces of a call after the first, until it is complete
        self.called = False          # whether any tool call was sent
        self.ended = False           # a call repeated an earlier one: the answer is complete

    @property
    def stopped(self) -> bool:
        return self._text.stopped or self.ended

    @property
    def matched(self) -> str | None:
        """The stop string that ended the text, if one did."""
        return self._text.matched

    def feed(self, piece: bytes, logprob: TokenLogprob | None = None) -> Chunk | None:
        """A sampled token's bytes (and its logprob when asked); the chunk to send now, if any."""
        return self._chunk(self._text.feed(piece), (logprob,) if logprob is not None else (), final=False)

    def flush(self) -> Chunk | None:
        """The rest at the end of generation (held text, an unfinished tool-call block as content)."""
        return self._chunk(self._text.flush(), (), final=True)

    def _chunk(self, text: str, logprobs: tuple, final: bool) -> Chunk | None:
        calls: tuple[ToolCallDelta, ...] = ()
        reasoning = ""
        if self._think is not None:
            reasoning, text = self._think.flush(text) if final else self._think.feed(text)
        if self._parser is not None and not self.ended:
            deltas = self._parser.feed(text) if text else []
            if final:
                deltas += self._parser.finish()
            text = "".join(d["content"] for d in deltas if "content" in d)
            calls = _merge(self._gate([c for d in deltas for c in d.get("tool_calls", ())], final))
            self.called = self.called or bool(calls)
        elif self.ended:
            text = ""
        if text or reasoning or logprobs or calls:
            return Chunk(text=text, index=self.index, logprobs=logprobs, tool_calls=calls, reasoning=reasoning)
        return None

    def _gate(self, pieces: list[dict], final: bool) -> list[dict]:
        """Pass the first call's pieces; hold a later call's until it is complete, then send it or, if it repeats
        an earlier call, end the answer."""
        out = []
        for c in pieces:
            (out if c["index"] == 0 else self._held).append(c)
        calls = self._parser.tool_calls
        done = len(calls) - (1 if self._parser.state in ("args", "tail") else 0)  # the last may be unfinished
        while self._held and self._held[0]["index"] < done and not self.ended:
            k = self._held[0]["index"]
            if any(_same(calls[k], calls[j]) for j in range(k)):
                self._held, self.ended = [], True
            else:
                out += [c for c in self._held if c["index"] == k]
                self._held = [c for c in self._held if c["index"] != k]
        self._held = [] if final else self._held  # a later call cut off by max_tokens was never sent: drop it
        return out


def _same(a: dict, b: dict) -> bool:
    fa, fb = a["function"], b["function"]
    if fa["name"] != fb["name"]:
        return False
    try:
        return json.loads(fa["arguments"]) == json.loads(fb["arguments"])
    except (ValueError, RecursionError):
        return fa["arguments"] == fb["arguments"]


def _merge(pieces: list[dict]) -> tuple[ToolCallDelta, ...]:
    """Pieces as ToolCallDeltas, consecutive pieces of one call joined (its header and first arguments together)."""
    out: list[ToolCallDelta] = []
    for c in pieces:
        fn = c.get("function", {})
        args = fn.get("arguments", "")
        if out and out[-1].index == c["index"] and "id" not in c:
            last = out[-1]
            out[-1] = ToolCallDelta(last.index, last.id, last.name, last.arguments + args)
        else:
            out.append(ToolCallDelta(c["index"], c.get("id"), fn.get("name") if "id" in c else None, args))
    return tuple(out)
