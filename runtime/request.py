"""One request as two frozen values, from the route to the ledger.

``RequestContext`` is who, where and when (id, start time, account, ledger endpoint name, dialect); ``Ask`` is
what is asked (model, messages or raw prompts, sampling with ``max_tokens`` and ``n`` inside it, stream, and the
constraints on the answer: ``response_format`` and tools). The HTTP layer builds both; the service, the backends and
the ledger only read them.
"""

from __future__ import annotations

import secrets
import time
from fnmatch import fnmatchcase
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from .types import Message, ResponseFormat, SamplingParams, Tools


@dataclass(frozen=True)
class Account:
    """Who is calling. ``key_id`` is None for unlimited dev keys from the command line. ``admin``: a key made for
    operating the server (team-gateway's admin keys)."""

    name: str
    key_id: int | None
    unlimited: bool = False
    admin: bool = False
    # The allowlists the model must pass, the key's and its team's (names or fnmatch patterns; () allows all).
    allowlists: tuple[tuple[str, ...], ...] = ()
    team: str | None = None
    rated: bool = False          # the key or its team has a per-minute limit (responses carry x-ratelimit-*)

    @property
    def operator(self) -> bool:
        """May read what concerns every tenant (/metrics): an admin key, or a dev key from --api-key."""
        return self.unlimited or self.admin

    def may_use(self, model: str) -> bool:
        """Whether every allowlist names ``model`` (an empty list allows nothing, ``*`` everything)."""
        return all(any(fnmatchcase(model, pattern) for pattern in allow) for allow in self.allowlists)


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


@dataclass(frozen=True)
class RequestContext:
    request_id: str = field(default_factory=new_request_id)
    started: float = field(default_factory=time.monotonic)   # time.monotonic() at arrival
    endpoint: str = "chat"                                    # the ledger's endpoint name (api/routes.py)
    dialect: str = "openai"                                   # openai | gateway | anthropic (its error format)
    account: Account | None = None
    body: str | None = None                                   # the raw body, kept only with --log-bodies
    client: str = ""                                          # the peer's address, for refusal tallies

    def elapsed_ms(self) -> float:
        return (time.monotonic() - self.started) * 1000


EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class Ask:
    """What is asked. The dialect checks the shape of every field; a backend that cannot honour a value (e.g. a
    JSON-Schema keyword its grammar cannot enforce) refuses it with InvalidRequest naming the field."""

    model: str | None                   # None: the catalogue's default
    messages: tuple[Message, ...]
    sampling: SamplingParams = SamplingParams()
    stream: bool = False
    prompt: tuple[str, ...] | None = None   # raw texts, no chat template (/v1/completions, /v1/embeddings)
    response_format: ResponseFormat | None = None   # None: text
    tools: Tools | None = None              # functions the model may call, and how it must choose
    keep_alive: float | None = None         # seconds the model stays loaded after this request (<0: until stop)
    thinking: bool | None = None            # a thinking template's switch (enable_thinking); None: its default
    prediction: str | None = None           # the expected output (Predicted Outputs): drafts, billed if rejected
    fit: bool = False                       # max_tokens is a ceiling: lowered to what the context leaves

    @property
    def choices(self) -> int:
        """How many answers the request gets: ``n`` for each prompt."""
        return self.sampling.n * (len(self.prompt) if self.prompt else 1)
    # For an upstream model (models.toml source = "openai"): the client's own request fields, passed to the
    # upstream unchanged (tools, response_format, logprobs, n...). Empty for the local engine. Read-only.
    extra: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    # False when the request uses what only an upstream serves (it failed the local dialect's checks): a local
    # model may then not stand in for it, e.g. as a fallback, because it would silently drop those fields.
    local: bool = True
