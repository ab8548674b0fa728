"""Use cases shared by both dialects: model -> prompt -> context check -> credit hold -> backend -> settle.

A model is a local GGUF or an OpenAI-compatible upstream; both are Backends, so keys, credit, the ledger row,
metrics and the access log are the same for each. ``fallbacks.py`` moves a request to the next candidate model
while nothing has reached the client.

The job's end, not the HTTP response, drives settlement: when the backend delivers a job's final chunk the
service settles the hold with the real usage, whether the client is still reading or long gone; settlement.py
builds every ledger row, for served and refused requests alike.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Callable

from .backends import Backend, Embedder
from .errors import (ContextLengthExceeded, InsufficientCredit, InvalidRequest, LedgerError,
                     OverloadedError, RequestError, ReverbError)
from . import upkeep
from .fallbacks import Attempts, Candidate
from .embedding import Embedding
from .generation import Generation, Hooks
from .ledger import Ledger, Reservation
from .loader import Models
from .models import refs
from .models import registry as registry_mod
from .models.registry import ModelSpec, Registry
from .request import Account, Ask, RequestContext
from .settings import Settings
from .settlement import Settler
from .types import Chunk

log = logging.getLogger("reverb.service")

# A body whose text is larger than this (bytes, bounded from characters) is held before it is rendered and tokenized;
# a smaller one costs milliseconds to count, so it is held for its exact worst case (docs/structured-output.md).
PREPARE_BEFORE_HOLD = 64 * 1024


class Service:
    """Owns the registry, the models (``loader.Models``: loaded, loading, unloaded) and the ledger. Built by
    ``build``."""

    def __init__(self, settings: Settings, registry: Registry, ledger: Ledger, models: Models,
                 hooks: Hooks | None = None):
        self.settings = settings
        self.registry = registry
        self.ledger = ledger
        self.models = models
        self._db_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reverb-ledger")
        self.hooks = hooks or Hooks()  # what the service reports as it works: the HTTP layer's metrics
        models.hooks = self.hooks      # loads are reported with the requests
        self.settlement = Settler(ledger, registry, self.hooks, self.db)   # every request's end: settlement.py
        self._tasks: set[asyncio.Task] = set()
        self.renewal: asyncio.Future | None = None   # a lease renewal in flight that streams wait on (upkeep.py)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def db(self, fn, *args):
        """Run a ledger call on the ledger's own thread, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._db_pool, fn, *args)

    async def authenticate(self, raw_key: str) -> Account | None:
        return await self.db(self.ledger.authenticate, raw_key)

    @property
    def backends(self) -> dict[str, Backend]:
        """The models loaded now, by name."""
        return self.models.backends

    def backend(self, name: str | None, account: Account | None = None) -> tuple[ModelSpec, Backend]:
        """The catalogue entry and loaded backend called ``name`` (not loaded here, not pinned). Raises
        ModelNotFound, never falls back; a model outside the account's allowlists (where accounts have them) is
        refused exactly as one that does not exist."""
        return self.models.peek(name, _allowed(account))

    async def start(self, ctx: RequestContext, ask: Ask) -> Generation:
        """Check everything, reserve credit and start the job. Raises a RequestError or OverloadedError.

        Credit is held before any costly preparation (docs/structured-output.md): a body with more text than
        PREPARE_BEFORE_HOLD is held first for what its size bounds (a key without that much is refused before its
        text is rendered or tokenized) and the hold raised to the worst case once the prompt is counted; a smaller
        one is rendered and tokenized (milliseconds) and held for its exact worst case. Either way the grammar is
        compiled only once the hold is in place, and a request refused after its prompt was counted (its grammar
        over a bound, a prompt longer than the context, no credit for the worst case) is charged for that prompt.
        The model asked for is checked as before; its ``fallbacks`` that cannot serve the request (not loaded,
        context too small, fields only an upstream serves) are left out. The hold covers the largest worst case.
        """
        # The model stays pinned (never unloaded) from here until the request settles.
        spec, backend = await self.models.acquire(ask.model, _allowed(ctx.account))
        pinned = True
        try:
            gen = await self._start(ctx, ask, spec, backend)
            pinned = False   # the job runs: its end releases the model (on_end)
            return gen
        finally:
            if pinned:
                self.models.release(spec.name, ask.keep_alive)

    async def _start(self, ctx: RequestContext, ask: Ask, spec: ModelSpec, backend: Backend) -> Generation:
        """``start`` with its model pinned: prepare, hold, compile (only once held), submit."""
        early, reservation = None, None
        if _text_bytes(ask) > PREPARE_BEFORE_HOLD:
            bound = _prompt_bound(ask, backend.info.ctx)
            completion = (ask.sampling.max_tokens or 0) * ask.choices + _prediction_bound(ask, backend.info.ctx)
            early = spec.cost(bound, completion)
            reservation = await self.db(self.ledger.reserve, ctx.account, ctx.request_id, early, spec.name,
                                        ctx.endpoint, 0, (spec.price_input, spec.price_output), bound + completion)
        try:
            candidates = [await self._candidate(spec, backend, ask)]
            for name in spec.fallbacks:
                try:
                    candidates.append(await self._candidate(*self.backend(name, ctx.account), ask))
                except RequestError as e:
                    log.info("request %s: fallback %s left out (%s)", ctx.request_id, name, e.code)
            most = getattr(backend, "key_slots", None)   # a local model: choices one key may run at once
            if not _holds(ctx.account):   # the operator's own key: not capped (docs/limits.md)
                candidates = [replace(c, prompt=replace(c.prompt, capped=False)) for c in candidates]
            elif most is not None and ask.sampling.n > most:
                raise InvalidRequest(f"'n' must be at most {most} on this server (one slot per choice, and one key "
                                     "holds at most this many; see --slots-per-key)", param="n", model=spec.name)
            hold, counted = max(c.hold for c in candidates), candidates[0].prompt.n_tokens
            # The hold also carries what a sweeper needs should this server die: prompt tokens and prices (the
            # model asked for; a fallback runs only before anything reached the client).
            if early is None:
                # a refusal here is free: nothing costly ran yet
                reservation = await self._reserve(ctx, candidates[0], hold, max(_tokens(c) for c in candidates))
                early = hold
            else:
                try:
                    await self.db(self.ledger.raise_hold, ctx.account, ctx.request_id, hold - early, counted)
                except InsufficientCredit as e:
                    raise _counted(e, counted)
            compiled = []
            for c in candidates:  # the costly part, now paid for: schema conversion and the grammar's compile
                compile_ = getattr(c.backend, "compile", None)
                compiled.append(replace(c, prompt=await compile_(c.prompt, ask)) if compile_ else c)
            candidates = compiled
        except (RequestError, OverloadedError) as e:
            if early is None:
                raise  # nothing held: the HTTP layer logs the refusal
            await self.settlement.refused_after_hold(ctx, spec, e)   # charged for the prompt it counted
            raise
        except BaseException as e:  # a ledger failure, or the client left while it was prepared
            if early is not None:
                await self.settlement.abandoned_after_hold(ctx, spec, e)
            raise

        def on_end(final: Chunk) -> None:
            self.models.release(spec.name, ask.keep_alive)
            self._spawn(self.settlement.settle(ctx, final, gen, ask.stream))

        gen = Generation(spec.name, ctx.started, self.hooks, on_end=on_end,
                         on_progress=upkeep.progress_hook(self, ctx) if ask.stream and _holds(ctx.account) else None)
        try:
            Attempts(candidates, gen, ctx.account.name if ctx.account else "", ctx.request_id).start()
        except OverloadedError as e:
            # Nothing ran: release the hold in the same step that logs the refusal.
            await self.settlement.close(ctx, spec, "rejected", e.code, 0)
            e.settled = True   # its row is written: the HTTP layer's refusal must not write another
            raise
        gen.limits = reservation.limits
        if reservation.epoch is not None:
            upkeep.track(self, ctx.request_id, reservation.epoch, gen, gate=ask.stream)
        return gen

    async def _reserve(self, ctx: RequestContext, first: Candidate, hold: int, tokens: int) -> Reservation:
        """Hold credit and take the request's place in its limits (``Ledger.reserve``). A credit or budget
        refusal says what the request would hold against what is left, and the max_tokens that would pass."""
        spec = first.spec
        try:
            return await self.db(self.ledger.reserve, ctx.account, ctx.request_id, hold, spec.name, ctx.endpoint,
                                 first.prompt.n_tokens, (spec.price_input, spec.price_output), tokens)
        except InsufficientCredit as e:
            if e.left is not None and first.params.max_tokens:
                prompt, choices = first.prompt.hold_tokens or first.prompt.n_tokens, first.prompt.choices
                left = e.left
                fits = _most_tokens(lambda m: spec.cost(prompt, m * choices) <= left, first.params.max_tokens)
                e.message += (f" (prompt of {prompt} tokens + max_tokens {first.params.max_tokens}"
                              f"{f' x {choices} choices' if choices > 1 else ''} at the model's prices); "
                              + (f"a max_tokens of at most {fits} would pass" if fits else
                                 "even max_tokens 1 would not pass"))
            raise

    async def _candidate(self, spec: ModelSpec, backend: Backend, ask: Ask) -> Candidate:
        """The request prepared for one model: prompt, context check, max_tokens, worst-case cost."""
        if not ask.local and not backend.info.passthrough:
            raise InvalidRequest(f"The model '{spec.name}' cannot serve every field of this request", param="model",
                                 model=spec.name)
        if ask.prompt is not None and backend.info.passthrough:
            raise InvalidRequest(f"The model '{spec.name}' is served by an upstream, which this endpoint does not "
                                 "relay (use /v1/chat/completions)", param="model", model=spec.name)
        prompt = await backend.prepare(ask)
        n, limit = prompt.longest, backend.info.ctx
        where = "messages" if ask.prompt is None else "prompt"
        if n >= limit:
            raise _counted(ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens; the {where} use {n}",
                param=where, model=spec.name), prompt.n_tokens)
        max_tokens = ask.sampling.max_tokens
        if max_tokens is None:
            max_tokens = min(limit - n, self.settings.max_tokens_cap)
        elif n + max_tokens > limit:
            raise _counted(ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens; the {where} use {n} "
                f"and max_tokens asks for {max_tokens}", param="max_tokens", model=spec.name), prompt.n_tokens)
        # The worst case: every choice runs to max_tokens; the prompt is billed once (a local job shares its KV).
        # A prediction's rejected tokens are billed as completion tokens: at most its length (draft.py).
        hold = spec.cost(prompt.hold_tokens or prompt.n_tokens, max_tokens * prompt.choices + prompt.predicted)
        return Candidate(spec, backend, prompt, replace(ask.sampling, max_tokens=max_tokens), hold)

    async def start_embedding(self, ctx: RequestContext, ask: Ask) -> "Embedding":
        """Check and reserve an embeddings request (``ask.prompt``, billed as prompt tokens). Raises a
        RequestError; from the returned value on, the request owns its ledger row."""
        spec, backend = await self.models.acquire(ask.model, _allowed(ctx.account))
        try:
            if not isinstance(backend, Embedder) or backend.info.passthrough:
                raise InvalidRequest(f"the model '{spec.name}' cannot make embeddings", param="model",
                                     model=spec.name)
            prompt = await backend.prepare(ask)
            limit = backend.info.ctx
            for i, tokens in enumerate(prompt.batch):
                if len(tokens) > limit:
                    raise ContextLengthExceeded(f"This model's maximum context length is {limit} tokens; input {i} "
                                                f"uses {len(tokens)}", param="input", model=spec.name)
            cap = self.settings.max_embedding_tokens
            if prompt.n_tokens > cap:
                raise InvalidRequest(f"'input' has {prompt.n_tokens} tokens; one request may embed at most {cap} "
                                     "(--max-embedding-tokens): split it", param="input", model=spec.name)
            job = backend.embedding_job(prompt)   # a place in the bounded embeddings queue (503 when it is full)
            try:
                reservation = await self.db(self.ledger.reserve, ctx.account, ctx.request_id,
                                            spec.cost(prompt.n_tokens, 0), spec.name, ctx.endpoint, prompt.n_tokens,
                                            (spec.price_input, spec.price_output))
            except BaseException:
                job.release()
                raise
        except BaseException:
            self.models.release(spec.name, ask.keep_alive)
            raise
        embedding = Embedding(self.settlement, ctx, spec, job, lambda: self.models.release(spec.name, ask.keep_alive))
        embedding.limits = reservation.limits
        if reservation.epoch is not None:
            upkeep.track(self, ctx.request_id, reservation.epoch, embedding)
        return embedding

    async def reject(self, ctx: RequestContext, error: ReverbError, model: str | None = None) -> None:
        """Log a request refused before it ran (settlement.py). Never raises."""
        await self.settlement.reject(ctx, error, model)

    async def finish_settlements(self, timeout: float = 5.0) -> None:
        """At shutdown, before ``close``: let jobs cancelled by the drain timeout end and write their rows (as
        cancelled), for at most ``timeout`` seconds; what is left is settled by ``close`` (the lease rule)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._tasks or any(b.stats().active for b in self.backends.values()):
            if asyncio.get_running_loop().time() > deadline:
                return
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=0.05)
            else:
                await asyncio.sleep(0.02)

    def model_event(self, model: str, event: str, seconds: float | None, memory: int, reason: str | None) -> None:
        """Record a load or unload in the ledger, off the event loop (a failure is logged, never raised)."""
        async def write():
            try:
                await self.db(self.ledger.model_event, model, event, seconds, memory, reason)
            except LedgerError as e:
                log.error("could not record that model %s was %s: %s", model, event, e.message)
        self._spawn(write())

    async def keep_lease(self) -> None:
        """While serving (the app's lifespan runs it): see ``upkeep.keep_lease``."""
        self.models.serving()
        await upkeep.keep_lease(self)

    def close(self) -> None:
        live = [entry for _, entry in list(self.settlement.live.values())]
        self.models.close()
        for entry in live:   # stopped by the backends' close: billed for what they computed
            if isinstance(entry, Embedding):
                entry.settle_at_stop()
        self._db_pool.shutdown(wait=True)
        try:
            self.settlement.retry()
            self.ledger.lease.retire()   # a clean stop: whatever is still held is settled now
        except LedgerError as e:
            log.error("could not settle this server's holds at stop (its lease will expire): %s", e.message)
        self.ledger.close()


def _tokens(c: Candidate) -> int:
    """What a request reserves of a tokens-per-minute limit: its prompt and every choice's max_tokens."""
    return ((c.prompt.hold_tokens or c.prompt.n_tokens) + (c.params.max_tokens or 0) * c.prompt.choices
            + c.prompt.predicted)


def _most_tokens(fits, most: int) -> int:
    """The largest m in [0, most] with fits(m) (fits is monotone); 0 when none does."""
    lo, hi = 0, most
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo if lo and fits(lo) else 0


def _allowed(account: Account | None):
    """The account's model check (``Account.may_use`` where accounts carry allowlists), or None."""
    return getattr(account, "may_use", None)


def _text_bytes(ask: Ask) -> int:
    texts = ask.prompt if ask.prompt is not None else [m.content for m in ask.messages]
    # at most 4 UTF-8 bytes a character: no encoding needed to bound it
    return (sum(len(t) for t in texts) + len(ask.prediction or "")) * 4


def _prompt_bound(ask: Ask, ctx: int) -> int:
    """The prompt's tokens as the body bounds them, for the hold taken before any preparation: a token spells at
    least one byte, and a prompt longer than the context is refused (so at most ``ctx`` per prompt is charged)."""
    if ask.prompt is not None:
        return sum(min(len(t.encode("utf-8", "replace")) + 1, ctx) for t in ask.prompt)
    n = sum(len(m.content.encode("utf-8", "replace")) + 8 for m in ask.messages)
    return max(1, min(n, ctx))


def _prediction_bound(ask: Ask, ctx: int) -> int:
    """A prediction's tokens as the body bounds them (a longer one than the context is refused)."""
    return min(len(ask.prediction.encode("utf-8", "replace")), ctx) if ask.prediction else 0


def _counted(error: RequestError, prompt_tokens: int) -> RequestError:
    error.prompt_tokens = prompt_tokens  # the prompt was read before the refusal: it is billed
    return error


def _holds(account: Account | None) -> bool:
    """Whether requests of this account put credit on hold (dev keys from the command line do not)."""
    return account is not None and not account.unlimited


def build(settings: Settings, backend_factory=None, *, serve: bool = True,
          hooks: Callable[[Registry, Models], Hooks] | None = None) -> Service:
    """Load the catalogue, the ledger, every local model named in ``settings.models`` (default: the catalogue's
    default; with ``--on-demand`` only those named, the rest on their first request) and every upstream entry
    (source = "openai": available from the start, nothing to load). A name that is not the catalogue's may be a
    GGUF file or ``hf.co/owner/repo[:QUANT]`` (``models/refs.py``).

    Raises ConfigError or ModelLoadError. ``backend_factory(spec, settings)`` makes one backend (default:
    ``loader.load_backend``). ``serve``: a server, which creates the ledger if needed, registers an instance with a
    lease and settles expired servers' holds; with False (``reverb chat``) the ledger must exist, no lease is
    taken and nothing is ever refunded. ``hooks(registry, models)`` makes what the service reports to (the HTTP
    layer passes its metrics, which read ``models.backends`` when scraped); default: nothing.
    """
    reg, named = refs.resolve(registry_mod.load(settings.catalogue_path), settings.models)
    preload = named or ([] if settings.on_demand else [reg.default])
    ledger = Ledger(settings.db_target, dev_keys=settings.api_keys, busy_timeout=settings.db_busy_timeout,
                    max_mb=settings.db_max_mb, create=serve)
    models = Models(settings, reg, backend_factory, servable=[n for n in preload if not reg.specs[n].upstream])
    reporter = hooks(reg, models) if hooks is not None else None
    models.hooks = reporter   # the loads at start are reported too
    try:
        models.load_now([n for n in preload if not reg.specs[n].upstream])
        if serve:  # after loading, so a slow load cannot outlive a short lease before its first heartbeat
            ledger.lease.register(settings.lease_seconds)
            ledger.lease.sweep()
            for name, entry in models.loaded.items():
                if not reg.specs[name].upstream:
                    ledger.model_event(name, "loaded", entry.load_seconds, entry.memory, "at start")
    except BaseException:
        models.close()
        ledger.close()
        raise
    service = Service(settings, reg, ledger, models, reporter)
    if serve:
        models.on_event = service.model_event
    return service
