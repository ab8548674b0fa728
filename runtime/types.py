"""Plain data passed between the layers: no I/O, no third-party imports.

Wire types (the JSON of each dialect) live in ``api/``; these are the shapes they convert to.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Message:
    role: str
    content: str


class FinishReason(str, enum.Enum):
    STOP = "stop"          # end-of-generation token or a stop string
    LENGTH = "length"      # max_tokens reached
    CANCELLED = "cancelled"  # the client went away
    ERROR = "error"        # the backend failed


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling. ``temperature <= 0`` means greedy; ``seed=None`` means a fresh random seed;
    ``max_tokens=None`` means up to the end of the context (the service resolves it before a job starts)."""

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


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Chunk:
    """One piece of a generation as the client sees it.

    ``text`` is complete UTF-8 text (possibly empty). The last chunk of a job has ``finish_reason`` and
    ``usage`` set; ``error`` is set when the job failed after it started.

    ``passthrough`` is set by an upstream backend: the upstream's own event (parsed JSON, read-only by
    convention), so the OpenAI dialect can relay its choices as they came (tool_calls, logprobs, refusal, n > 1,
    fields reverb does not model). Everything else reads only ``text``, which is choice 0's content.
    """

    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    error: Exception | None = None
    passthrough: Mapping[str, Any] | None = None
