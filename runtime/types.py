"""Plain data passed between the layers: no I/O, no third-party imports.

Wire types (the JSON of each dialect) live in ``api/``; these are the engine-facing shapes they convert to.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Message:
    role: str
    content: str


class FinishReason(str, enum.Enum):
    STOP = "stop"          # end-of-generation token or a stop string
    LENGTH = "length"      # max_tokens reached
    CANCELLED = "cancelled"  # the client went away
    ERROR = "error"        # the engine failed


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling. ``temperature <= 0`` means greedy; ``seed=None`` means a fresh random seed."""

    max_tokens: int = 256
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
    """

    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    error: Exception | None = None


@dataclass
class Job:
    """A generation request handed to a model's scheduler.

    ``prompt`` is the token list. ``deliver`` receives each Chunk: on ``loop`` (the scheduler hands a whole
    step's chunks to the loop in one ``call_soon_threadsafe``), or on the scheduler thread when ``loop`` is None.
    ``cancelled`` is set by whoever owns the request when the client leaves; the scheduler checks it each step.
    """

    prompt: list[int]
    params: SamplingParams
    deliver: object  # Callable[[Chunk], None]
    loop: object = None  # asyncio.AbstractEventLoop | None
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = 0.0
