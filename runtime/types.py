"""Plain data passed between the layers: no I/O, no third-party imports.

Wire types (the JSON of each dialect) live in ``api/``; these are the shapes they convert to.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class ToolCall:
    """A function call the assistant made: ``arguments`` is JSON text, as on OpenAI's wire."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Message:
    role: str                                   # system | user | assistant | tool
    content: str
    tool_calls: tuple[ToolCall, ...] = ()       # assistant messages that called functions
    tool_call_id: str | None = None             # tool messages: the call this result answers
    name: str | None = None                     # an optional participant name, handed to the chat template
    reasoning: str = ""                         # an assistant's thought, handed to a template as reasoning_content


@dataclass(frozen=True)
class Tool:
    """A function the model may call. ``parameters`` is the JSON Schema of its arguments (None: no arguments)."""

    name: str
    description: str = ""
    parameters: dict | None = None


@dataclass(frozen=True)
class Tools:
    """The request's ``tools``, ``tool_choice`` and ``parallel_tool_calls``, checked.

    ``choice`` is none | auto | required; a named function is ``required`` with ``forced`` set to its name."""

    tools: tuple[Tool, ...]
    choice: str = "auto"
    forced: str | None = None
    parallel: bool = True

    @property
    def allowed(self) -> tuple[Tool, ...]:
        return tuple(t for t in self.tools if self.forced in (None, t.name))


@dataclass(frozen=True)
class ResponseFormat:
    """The request's ``response_format``, its shape checked at the edge (api/checks.py): the answer is one JSON
    object (``json_object``, or ``json_schema`` without a schema) or a JSON value valid against ``schema``. The
    grammar package checks the schema's keywords. ``strict`` true and false are enforced alike."""

    kind: str                                   # json_object | json_schema
    schema: dict | None = None
    name: str | None = None
    strict: bool = False


class FinishReason(str, enum.Enum):
    STOP = "stop"          # end-of-generation token or a stop string
    LENGTH = "length"      # max_tokens reached
    TOOL_CALLS = "tool_calls"  # the answer called functions
    CANCELLED = "cancelled"  # the client went away
    ERROR = "error"        # the backend failed


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling. ``temperature <= 0`` means greedy; ``seed=None`` means a fresh random seed;
    ``max_tokens=None`` means up to the end of the context (the service resolves it before a job starts).
    ``n`` choices are generated from one prompt (choice i samples with seed + i); ``logprobs`` asks for each
    generated token's log probability and ``top_logprobs`` for that many alternatives."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias); -100 bans a token
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int          # billed: the output, and a prediction's rejected tokens
    # A request's prediction (OpenAI's Predicted Outputs): its tokens that became output, and those decoded and
    # thrown away (counted in completion_tokens too, as OpenAI bills them).
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens,
                     self.accepted_prediction_tokens + other.accepted_prediction_tokens,
                     self.rejected_prediction_tokens + other.rejected_prediction_tokens)


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its text (``bytes`` may hold part of a UTF-8 character), log probability under the
    model, and the ``top`` most likely alternatives at that position as (text, bytes, logprob)."""

    token: str
    bytes: bytes
    logprob: float
    top: tuple[tuple[str, bytes, float], ...] = ()


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a tool call as it streams: the first piece of call ``index`` carries ``id`` and ``name``,
    later pieces more ``arguments`` text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class Chunk:
    """One piece of a generation as the client sees it.

    ``text`` is complete UTF-8 text (possibly empty); ``index`` is the choice it belongs to (``n`` > 1, local
    backends). Each choice ends with one chunk that has ``finish_reason`` and ``usage`` set (the choice's own
    completion tokens; the prompt is counted on one choice only); ``error`` is set when the job failed after it
    started. ``logprobs`` and ``tool_calls`` carry what the choice's tokens produced beyond text.

    ``passthrough`` is set by an upstream backend: the upstream's own event (parsed JSON, read-only by
    convention), so the OpenAI dialect can relay its choices as they came (tool_calls, logprobs, refusal, n > 1,
    fields reverb does not model). An upstream's job is one stream: its ``text`` is choice 0's content.
    """

    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    error: Exception | None = None
    index: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()
    tool_calls: tuple[ToolCallDelta, ...] = ()
    passthrough: Mapping[str, Any] | None = None
    # Thinking text of a model whose template thinks (<think>...</think>), split out of ``text``: chat renders it
    # as ``reasoning_content``, Responses as a ``reasoning`` item, Messages as a ``thinking`` block.
    reasoning: str = ""
    # On a choice's last chunk, when a stop string ended it: which one (Messages' ``stop_sequence``).
    stop: str | None = None
