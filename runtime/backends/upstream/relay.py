"""What one job relays from its upstream: scrubbed, cut at ``max_tokens`` and counted locally. Pure: no I/O.

An upstream is trusted to answer, not to keep to the request: it may echo its own key, ignore ``max_tokens``,
or report any usage. So every event passes ``Relay.admit`` before it reaches the client:

- the upstream key is replaced by ``***`` in every string of the event (object keys included);
- each choice's delta (content, refusal, reasoning and tool-call pieces) is counted in UTF-8 bytes and cut at
  ``max_tokens`` x ``MAX_TOKEN_BYTES`` (16) bytes; the cut choice ends with ``finish_reason: "length"``. reverb
  has no tokenizer for a model it does not run, so the bound is in bytes: no common tokenizer's tokens average
  more than 16 bytes over an answer (English runs ~4), so an upstream that keeps to ``max_tokens`` is never cut;
- the events themselves (logprobs included) are bounded at 64 KiB + 4 KiB per token asked for;
- a choice index outside ``0..n-1`` is a malformed event, and a choice that has finished gets nothing more.

The local count of a choice is the documented estimate (``wire.estimate_text``) of what was relayed, at most
``max_tokens``. ``usage`` checks what the upstream reports against it (see its docstring).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping

from ...errors import UpstreamError
from ...types import Usage
from . import wire

log = logging.getLogger("reverb.upstream")

MAX_TOKEN_BYTES = wire.MAX_TOKEN_BYTES
EVENT_BYTES_BASE = 64 << 10
EVENT_BYTES_PER_TOKEN = 4 << 10
TEXT_FIELDS = ("content", "refusal", "reasoning_content", "reasoning")


class Relay:
    def __init__(self, model: str, secret: str | None, choices: int, max_tokens: int, prompt_estimate: int,
                 prompt_floor: int, prompt_bound: int, predicted: int = 0):
        self.model, self.secret = model, secret
        self.predicted = predicted           # a prediction's tokens, billed by the upstream when it rejects them
        self.choices, self.max_tokens = choices, max_tokens
        self.prompt_estimate, self.prompt_floor, self.prompt_bound = prompt_estimate, prompt_floor, prompt_bound
        self.text_limit = max_tokens * MAX_TOKEN_BYTES
        self.event_limit = EVENT_BYTES_BASE + choices * max_tokens * EVENT_BYTES_PER_TOKEN
        self.text_bytes = [0] * choices
        self.tokens = [0] * choices          # the local count of each choice (estimate of what was relayed)
        self.finished = [False] * choices
        self.event_bytes = 0
        self.cut = False                     # the upstream sent more than max_tokens allows: the rest is dropped

    @property
    def done(self) -> bool:
        """Every choice has finished (or was cut): nothing more of the upstream's answer is relayed."""
        return all(self.finished)

    def admit(self, event: Mapping[str, Any], size: int) -> dict | None:
        """The event as it may reach the client (scrubbed, cut), or None when none of it may. ``size``: its bytes
        on the wire. Raises UpstreamError for a malformed event."""
        event = wire.scrub_all(dict(event), self.secret)
        choices = event.get("choices")
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise UpstreamError(f"The upstream for model '{self.model}' sent a malformed event", model=self.model,
                                code="upstream_bad_response")
        self.event_bytes += size
        if self.event_bytes > self.event_limit:
            self._cut_all("events")
            return None
        kept = []
        for choice in choices:
            index = choice.get("index", 0)
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < self.choices:
                raise UpstreamError(f"The upstream for model '{self.model}' sent a choice it was not asked for",
                                    model=self.model, code="upstream_bad_response")
            if self.finished[index]:
                continue  # after its finish (or our cut), a choice gets nothing more
            kept.append(self._choice(index, choice))
        if not kept and choices:
            return None
        event["choices"] = kept
        return event

    def _choice(self, index: int, choice: dict) -> dict:
        delta = choice.get("delta")
        if isinstance(delta, dict):
            size = _delta_bytes(delta)
            room = self.text_limit - self.text_bytes[index]
            if size > room:
                choice = {**choice, "delta": _cut_delta(delta, room), "finish_reason": "length"}
                delta = choice["delta"]
                size = _delta_bytes(delta)
                self.cut = True
                self.finished[index] = True
                log.warning("upstream %s sent more than max_tokens (%d) allows: choice %d cut at %d bytes",
                            self.model, self.max_tokens, index, self.text_limit)
            self.text_bytes[index] += size
            self.tokens[index] = min(self.max_tokens, self.tokens[index] + wire.delta_pieces(choice)[1])
        if choice.get("finish_reason"):
            self.finished[index] = True
        return choice

    def _cut_all(self, what: str) -> None:
        if not self.done:
            log.warning("upstream %s sent more %s than max_tokens (%d) allows: cut", self.model, what,
                        self.max_tokens)
        self.cut = True
        self.finished = [True] * self.choices

    def local(self) -> Usage:
        """The local count of what was relayed: the prompt's estimate and each choice's text estimate."""
        return Usage(self.prompt_estimate, sum(self.tokens))

    def usage(self, reported: Usage | None) -> Usage:
        """The usage to settle on: the upstream's own when it is plausible, else the local count (logged).

        Plausible means: completion tokens at least the relayed bytes / 16 (no token is that long on average)
        and at most max_tokens x n (plus a prediction's tokens, whose rejected ones are billed); prompt tokens at
        least the prompt's bytes / 16 and at most its hold bound.
        After a cut the upstream ignored max_tokens, so its figures are not used at all."""
        local = self.local()
        if reported is None or self.cut:
            return local
        completion_floor = -(-sum(self.text_bytes) // MAX_TOKEN_BYTES)
        ok_completion = (completion_floor <= reported.completion_tokens
                         <= self.max_tokens * self.choices + self.predicted)
        ok_prompt = self.prompt_floor <= reported.prompt_tokens <= self.prompt_bound
        if ok_completion and ok_prompt:
            return reported
        log.warning("upstream %s reported usage %d+%d for %d bytes relayed; settled on the local count %d+%d",
                    self.model, reported.prompt_tokens, reported.completion_tokens, sum(self.text_bytes),
                    local.prompt_tokens if not ok_prompt else reported.prompt_tokens,
                    local.completion_tokens if not ok_completion else reported.completion_tokens)
        return Usage(reported.prompt_tokens if ok_prompt else local.prompt_tokens,
                     reported.completion_tokens if ok_completion else local.completion_tokens)


def _delta_bytes(delta: dict) -> int:
    """UTF-8 bytes a delta carries for the client: its text fields, and the JSON of the rest (tool calls)."""
    n = 0
    rest = {}
    for k, v in delta.items():
        if k == "role" or v is None:
            continue
        if k in TEXT_FIELDS and isinstance(v, str):
            n += len(v.encode("utf-8", "replace"))
        else:
            rest[k] = v
    if rest:
        n += len(json.dumps(rest, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace"))
    return n


def _cut_delta(delta: dict, room: int) -> dict:
    """The delta within ``room`` bytes: its content cut on a character boundary; other pieces dropped."""
    out = {k: v for k, v in delta.items() if k == "role"}
    content = delta.get("content")
    if isinstance(content, str) and room > 0:
        out["content"] = content.encode("utf-8", "replace")[:room].decode("utf-8", "ignore")
    return out
