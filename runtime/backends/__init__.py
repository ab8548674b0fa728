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
class Counts:
    """What the service reads of a prepared request: its counts, for the context check, the credit hold and the bill.

    ``n_tokens`` is the prompt's tokens, summed over its prompts when a request has several (/v1/completions and
    /v1/embeddings with a list: ``lengths`` then holds each one's). ``choices`` is how many answers the job makes
    (OpenAI's n, per prompt): the credit hold covers each. ``streams`` is how many of them the backend delivers as
    separate choice streams, each ending with its own finish chunk (a local job of n choices: n; an upstream relays
    its n choices inside one stream: 1)."""

    n_tokens: int
    lengths: tuple[int, ...] = ()
    choices: int = 1
    # When n_tokens is an estimate (an upstream's tokenizer is unknown): an upper bound to hold credit for.
    hold_tokens: int | None = None
    streams: int = 1
    # The tokens of the request's prediction (Predicted Outputs): its rejected ones are billed as completion tokens,
    # so the credit hold covers them too.
    predicted: int = 0    # (an upstream's: a bound from the prediction's bytes)

    @property
    def longest(self) -> int:
        """The longest single prompt: what must fit in the context with max_tokens."""
        return max(self.lengths) if self.lengths else self.n_tokens

    @property
    def held(self) -> int:
        """The prompt tokens to hold credit for: the bound when the count is an estimate."""
        return self.hold_tokens or self.n_tokens


class Prepared(Protocol):
    """What ``Backend.prepare`` returns: the backend's own value (its tokens and compiled grammar, or the client's
    body for an upstream), handed back unchanged to the same backend's ``compile``, ``submit`` and
    ``embedding_job``. The service reads only ``counts``."""

    counts: Counts


@dataclass(frozen=True)
class Info:
    """How a backend describes itself (``/v1/models``, ``/health``, ``reverb models``)."""

    name: str
    provider: str
    ctx: int                      # tokens per request: prompt + completion
    created: int                  # unix time the model was loaded
    passthrough: bool = False     # serves ``Ask.extra`` (the client's own fields) as given: an upstream
    key_slots: int | None = None  # slots (choices) one capped key's requests may hold at once: a local model


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

    async def prepare(self, ask: Ask) -> Prepared:
        """Render and count the prompt (cheap: run before the credit hold). Raises InvalidRequest or
        TemplateError."""

    async def compile(self, prepared: Prepared, ask: Ask) -> Prepared:
        """The costly part of preparing, run only once credit is held (a local model compiles response_format and
        tools into its grammar; an upstream has nothing to do). Raises InvalidRequest or GrammarTooCostly."""

    def submit(self, prepared: Prepared, params: SamplingParams, on_chunk: Callable[[Chunk], None],
               tenant: str, capped: bool = True) -> Handle:
        """Start a job of ``params.n`` choices per prompt; ``on_chunk`` is called on the calling event loop, in
        order, each choice ending with one chunk that has a finish_reason (choices of prompt p are indexed
        p * n + i). ``tenant`` names whose request it is (the API key): cached state may be reused only within
        one tenant, and a local model shares its slots fairly between tenants, within per-key caps unless
        ``capped`` is False (the operator's own keys). Must be called on that loop. Raises OverloadedError when
        it cannot take more work."""

    def stats(self) -> Stats: ...

    def close(self) -> None: ...


@runtime_checkable
class Embedder(Protocol):
    """A backend that also makes embeddings (the llama.cpp one); an upstream does not."""

    def embedding_job(self, prepared: Prepared):
        """A place in this model's bounded embeddings queue for the prepared inputs (OverloadedError when full): an
        EmbeddingJob (backends/llama/backend.py) that computes one unit-length vector per input in chunks, can be
        stopped, and counts its tokens."""
