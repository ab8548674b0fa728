"""UpstreamBackend: a catalogue entry served by an OpenAI-compatible engine elsewhere (vLLM, llama-server,
Ollama's /v1, a hosted API). Implements the ``backends.Backend`` protocol, so the service holds credit, settles
and logs exactly as for a local model.

Each job is one streaming request upstream, run as a task on the event loop. Every upstream event becomes a
Chunk whose ``text`` is choice 0's content and whose ``passthrough`` is the event itself (the OpenAI dialect
relays its choices unchanged). The last chunk carries the upstream's own ``usage``; when the upstream sends
none, or the answer breaks off, the usage is the documented estimate (``wire``) of what was delivered. A failure
before the first event reports zero usage, so its hold is refunded in full.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Mapping

from ...errors import ConfigError, InvalidRequest, ReverbError, UpstreamError, UpstreamTimeout
from ...models.registry import ModelSpec
from ...request import Ask
from ...types import Chunk, FinishReason, SamplingParams, Usage
from .. import Counts, Info, Stats
from . import wire
from .client import DONE, UpstreamClient
from .relay import Relay

log = logging.getLogger("reverb.upstream")
MAX_CHOICES = 128


@dataclass(frozen=True)
class UpstreamPrompt:
    """A request prepared for an upstream (``backends.Prepared``): its estimated counts and the Ask whose client
    fields are sent on."""

    counts: Counts
    ask: Ask


class UpstreamBackend:
    def __init__(self, spec: ModelSpec, key: str | None):
        self.spec = spec
        self.client = UpstreamClient(spec, key)
        self._key = key
        self.info = Info(name=spec.name, provider=spec.provider, ctx=spec.ctx, created=int(time.time()),
                         passthrough=True)
        self.jobs: set[_Job] = set()

    def __repr__(self) -> str:
        return f"UpstreamBackend({self.spec.name!r})"

    @classmethod
    def open(cls, spec: ModelSpec, environ: Mapping[str, str] | None = None) -> "UpstreamBackend":
        """The backend for an upstream entry, its key read from the variable ``api_key_env`` names.

        Raises ConfigError when that variable is unset, empty or not a usable key (the message names the
        variable, never its value). Nothing touches the network until the first request."""
        env = os.environ if environ is None else environ
        key = None
        if spec.api_key_env:
            key = env.get(spec.api_key_env, "")
            if not key:
                raise ConfigError(f"model '{spec.name}': the environment variable {spec.api_key_env} (api_key_env) "
                                  "is not set", model=spec.name, param="api_key_env")
            if not key.isascii() or not key.isprintable() or " " in key or len(key) > 4096:
                raise ConfigError(f"model '{spec.name}': the environment variable {spec.api_key_env} does not hold "
                                  "a usable key (printable ASCII without spaces)", model=spec.name,
                                  param="api_key_env")
        return cls(spec, key)

    async def prepare(self, ask: Ask) -> UpstreamPrompt:
        if not ask.extra:
            _refuse_unrelayed(self.spec.name, ask)
        estimate, bound = wire.estimate_prompt(ask)
        n = ask.extra.get("n", 1) if ask.extra else 1
        choices = n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_CHOICES else 1
        return UpstreamPrompt(Counts(n_tokens=estimate, hold_tokens=bound, choices=choices,
                                     predicted=wire.prediction_bound(ask)), ask)

    async def compile(self, prompt: UpstreamPrompt, ask: Ask) -> UpstreamPrompt:
        """Nothing to compile: the upstream enforces the request's own response_format and tools."""
        return prompt

    def submit(self, prompt: UpstreamPrompt, params: SamplingParams, on_chunk: Callable[[Chunk], None],
               tenant: str, capped: bool = True) -> "_Job":
        """``tenant`` and ``capped`` concern a local model's slots: an upstream shares its own capacity."""
        body = wire.request_body(self.spec.upstream_model, prompt.ask, params)
        job = _Job(self, prompt, params.max_tokens or 0, on_chunk)
        job.task = asyncio.get_running_loop().create_task(job.run(body))
        return job

    def stats(self) -> Stats:
        return Stats(waiting=0, active=len(self.jobs), slots=0)

    def close(self) -> None:
        self.client.close()


def _refuse_unrelayed(name: str, ask: Ask) -> None:
    """A request in reverb's own terms (the gateway dialect) reaches an upstream as messages and sampling only:
    what would be dropped on the way is refused, naming it, never silently ignored."""
    param = ("response_format" if ask.response_format is not None
             else "tools" if ask.tools is not None and ask.tools.choice != "none"
             else "logprobs" if ask.sampling.logprobs else None)
    if param is not None:
        raise InvalidRequest(f"'{param}' is not relayed to the upstream that serves model '{name}'; send this "
                             "request to /v1/chat/completions, which passes it through", param=param, model=name)


class _Job:
    """One upstream request; it is its own Handle (``cancel`` closes the upstream connection)."""

    def __init__(self, backend: UpstreamBackend, prompt: UpstreamPrompt, max_tokens: int,
                 on_chunk: Callable[[Chunk], None]):
        self.backend = backend
        self.prompt = prompt
        spec = backend.spec
        counts = prompt.counts
        self.relay = Relay(spec.name, backend._key, counts.choices, max_tokens, counts.n_tokens,
                           wire.prompt_floor(prompt.ask), counts.held, predicted=counts.predicted)
        self.on_chunk = on_chunk
        self.task: asyncio.Task | None = None
        self.delivered = False

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _estimate(self) -> Usage:
        """What was delivered, counted locally: zero before the first event (the hold is refunded in full)."""
        return self.relay.local() if self.delivered else Usage(0, 0)

    async def run(self, body: dict) -> None:
        self.backend.jobs.add(self)
        try:
            final = await self._stream(body)
        except asyncio.CancelledError:  # the client went away: the connection is closed, the upstream stops
            final = Chunk(finish_reason=FinishReason.CANCELLED, usage=self._estimate())
        except Exception:  # a bug here must still end the job, or its hold would stay open
            # the traceback may quote what the upstream sent: never its key
            trace = traceback.format_exc()
            log.error("upstream job for %s failed:\n%s", self.backend.spec.name,
                      trace.replace(self.backend._key, "***") if self.backend._key else trace)
            final = Chunk(finish_reason=FinishReason.ERROR, usage=self._estimate(),
                          error=UpstreamError("The upstream request failed", model=self.backend.spec.name))
        finally:
            self.backend.jobs.discard(self)
        self.on_chunk(final)

    async def _stream(self, body: dict) -> Chunk:
        spec, key = self.backend.spec, self.backend._key
        name = spec.name
        usage: Usage | None = None
        finish: object = None
        done = False
        try:
            # One deadline for the whole request: bytes (SSE keep-alive comments included) only reset the
            # between-bytes timeout, never this.
            async with asyncio.timeout(spec.deadline), \
                    contextlib.aclosing(self.backend.client.events(body, self.relay.event_limit)) as events:
                async for item in events:
                    if item is DONE:
                        done = True
                        break
                    raw, size = item
                    error = wire.event_error(raw, name, key)
                    if error is not None:
                        raise error
                    usage = wire.usage_of(raw) or usage
                    event = self.relay.admit(raw, size)
                    if event is not None and event["choices"]:
                        text = ""
                        for choice in event["choices"]:
                            if choice.get("index", 0) == 0:
                                text += wire.delta_pieces(choice)[0]
                                finish = choice.get("finish_reason") or finish
                        self.delivered = True
                        self.on_chunk(Chunk(text=text, passthrough=event))
                    if self.relay.cut:
                        break  # the upstream ignored max_tokens: stop reading (its connection is closed)
        except TimeoutError:
            log.warning("upstream %s: no complete answer within its deadline of %g s", name, spec.deadline)
            return Chunk(finish_reason=FinishReason.ERROR, usage=self._estimate(), error=UpstreamTimeout(
                f"The upstream for model '{name}' did not finish within {spec.deadline:g} s", model=name))
        except ReverbError as e:
            return Chunk(finish_reason=FinishReason.ERROR, usage=self._estimate(), error=e)
        if self.relay.cut:
            return Chunk(finish_reason=FinishReason.LENGTH, usage=self.relay.usage(None))
        if not done and finish is None:
            return Chunk(finish_reason=FinishReason.ERROR, usage=self._estimate(), error=UpstreamError(
                f"The upstream's answer for model '{name}' ended early", model=name, code="upstream_cut"))
        return Chunk(finish_reason=wire.finish_of(finish), usage=self.relay.usage(usage))
