"""The model backend seam: how the service runs a request on a loaded model, whatever runs it.

The service knows only this protocol. The llama.cpp batcher (``backends/llama``) is one implementation, an
OpenAI-compatible upstream over HTTP (``backends/upstream``) another, a fake in the tests a third. Settlement
never lives in a backend: a backend streams Chunks and reports the end (the chunk with ``finish_reason``), and
the service settles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

from ..request import Ask
from ..types import Chunk, SamplingParams


@dataclass(frozen=True)
class Prompt:
    """A prepared prompt: what the backend will run and how many tokens it counts for billing and the context
    check.

    ``batch`` holds one token sequence per prompt when a request has several (/v1/completions and /v1/embeddings
    with a list); ``n_tokens`` is then their sum. ``choices`` is how many answers the job makes (OpenAI's n, per
    prompt): the credit hold covers each. ``streams`` is how many of them the backend delivers as separate choice
    streams, each ending with its own finish chunk (a local job of n choices: n; an upstream relays its n choices
    inside one stream: 1). ``constraint`` is the backend's own compiled response_format and tools."""

    n_tokens: int
    tokens: tuple[int, ...] = ()
    choices: int = 1
    # When n_tokens is an estimate (an upstream's tokenizer is unknown): an upper bound to hold credit for.
    hold_tokens: int | None = None
    batch: tuple[tuple[int, ...], ...] = ()
    streams: int = 1
    constraint: object = None
    capped: bool = True   # a local model's per-key caps apply (the service clears it for the operator's own keys)
    # The tokens of the request's prediction (Predicted Outputs): its rejected ones are billed as completion tokens,
    # so the credit hold covers them too.
    prediction: tuple[int, ...] = ()
    # When the prediction's token count is unknown (an upstream's tokenizer): an upper bound to hold credit for.
    prediction_hold: int | None = None

    @property
    def predicted(self) -> int:
        """The most completion tokens a prediction may add to the bill (its rejected tokens)."""
        return self.prediction_hold if self.prediction_hold is not None else len(self.prediction)

    @property
    def longest(self) -> int:
        """The longest single prompt: what must fit in the context with max_tokens."""
        return max(map(len, self.batch)) if self.batch else self.n_tokens


@dataclass(frozen=True)
class Info:
    """How a backend describes itself (``/v1/models``, ``/health``, ``reverb models``)."""

    name: str
    provider: str
    ctx: int                      # tokens per request: prompt + completion
    created: int                  # unix time the model was loaded
    passthrough: bool = False     # serves ``Ask.extra`` (the client's own fields) as given: an upstream


@dataclass(frozen=True)
class Stats:
    waiting: int
    active: int
    slots: int
    reused_tokens: int = 0        # prompt tokens taken from a cache instead of computed, since start
    cached_prompts: int = 0       # prompt prefixes kept in host memory beyond the slots
    cached_prompt_bytes: int = 0
    threads: int = 0              # llama.cpp threads decoding now (0: not a local model)
    drafts: tuple = ()            # (source, rows decoded as drafts, of which accepted) since start (draft.py)


class Handle(Protocol):
    def cancel(self) -> None:
        """Stop the job (the client left); its last chunk still arrives, with FinishReason.CANCELLED."""


class Backend(Protocol):
    info: Info

    async def prepare(self, ask: Ask) -> Prompt:
        """Render and count the prompt. Raises InvalidRequest or TemplateError."""

    def submit(self, prompt: Prompt, params: SamplingParams, on_chunk: Callable[[Chunk], None],
               tenant: str) -> Handle:
        """Start a job of ``params.n`` choices per prompt; ``on_chunk`` is called on the calling event loop, in
        order, each choice ending with one chunk that has a finish_reason (choices of prompt p are indexed
        p * n + i). ``tenant`` names whose request it is (the API key): cached state may be reused only within
        one tenant, and a local model shares its slots fairly between tenants (``Prompt.capped``). Must be called
        on that loop. Raises OverloadedError when it cannot take more work."""

    def stats(self) -> Stats: ...

    def close(self) -> None: ...


@runtime_checkable
class Embedder(Protocol):
    """A backend that also makes embeddings (the llama.cpp one); an upstream does not."""

    def embedding_job(self, prompt: Prompt):
        """A place in this model's bounded embeddings queue for ``prompt.batch`` (OverloadedError when full): an
        EmbeddingJob (backends/llama/backend.py) that computes one unit-length vector per prompt in chunks, can be
        stopped, and counts its tokens."""
