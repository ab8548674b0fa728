"""The model backend seam: how the service runs a request on a loaded model, whatever runs it.

The service knows only this protocol. The llama.cpp batcher (``backends/llama``) is one implementation; a fake
in the tests is another. Settlement never lives in a backend: a backend streams Chunks and reports the end
(the chunk with ``finish_reason``), and the service settles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from ..request import Ask
from ..types import Chunk, SamplingParams


@dataclass(frozen=True)
class Prompt:
    """A prepared prompt: what the backend will run and how many tokens it counts for billing."""

    n_tokens: int
    tokens: tuple[int, ...] = ()


@dataclass(frozen=True)
class Info:
    """How a backend describes itself (``/v1/models``, ``/health``, ``reverb models``)."""

    name: str
    provider: str
    ctx: int                      # tokens per request: prompt + completion
    created: int                  # unix time the model was loaded


@dataclass(frozen=True)
class Stats:
    waiting: int
    active: int
    slots: int
    reused_tokens: int = 0        # prompt tokens taken from a cache instead of computed, since start
    cached_prompts: int = 0       # prompt prefixes kept in host memory beyond the slots
    cached_prompt_bytes: int = 0


class Handle(Protocol):
    def cancel(self) -> None:
        """Stop the job (the client left); its last chunk still arrives, with FinishReason.CANCELLED."""


class Backend(Protocol):
    info: Info

    async def prepare(self, ask: Ask) -> Prompt:
        """Render and count the prompt. Raises InvalidRequest or TemplateError."""

    def submit(self, prompt: Prompt, params: SamplingParams, on_chunk: Callable[[Chunk], None],
               tenant: str) -> Handle:
        """Start a job; ``on_chunk`` is called on the calling event loop, in order, the last chunk with a
        finish_reason. ``tenant`` names whose request it is (the API key): cached state may be reused only within
        one tenant. Must be called on that loop. Raises OverloadedError when it cannot take more work."""

    def stats(self) -> Stats: ...

    def close(self) -> None: ...
