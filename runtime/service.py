"""Use cases shared by both dialects: model -> prompt -> context check -> credit hold -> backend -> settle.

A model is a local GGUF or an OpenAI-compatible upstream; both are Backends, so keys, credit, the ledger row,
metrics and the access log are the same for each. ``fallbacks.py`` moves a request to the next candidate model
while nothing has reached the client.

The job's end, not the HTTP response, drives settlement: when the backend delivers a job's final chunk the
service settles the hold with the real usage, whether the client is still reading or long gone. ``_record`` is
the one place a ledger row is built, for served and refused requests alike.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from .backends import Backend
from .errors import (ContextLengthExceeded, InvalidRequest, LedgerError, OverloadedError, RequestError,
                     ReverbError)
from . import upkeep
from .fallbacks import Attempts, Candidate
from .generation import Generation, Hooks, Settlement
from .ledger import Ledger, RequestRecord, bounded_model
from .loader import Models
from .models import refs
from .models import registry as registry_mod
from .models.registry import ModelSpec, Registry
from .request import Account, Ask, RequestContext
from .settings import Settings
from .types import Chunk, FinishReason, Usage

log = logging.getLogger("reverb.service")

_STATUS = {FinishReason.STOP: "completed", FinishReason.LENGTH: "completed", FinishReason.TOOL_CALLS: "completed",
           FinishReason.CANCELLED: "cancelled"}
MAX_UNSETTLED = 10_000   # failed settlements kept for retry; beyond, the lease rule settles them at stop


class Service:
    """Owns the registry, the models (``loader.Models``: loaded, loading, unloaded) and the ledger. Built by
    ``build``."""

    def __init__(self, settings: Settings, registry: Registry, ledger: Ledger, models: Models):
        self.settings = settings
        self.registry = registry
        self.ledger = ledger
        self.models = models
        self._db_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reverb-ledger")
        self.hooks = Hooks()  # replaced by the HTTP layer's metrics
        self._tasks: set[asyncio.Task] = set()
        # request id -> (account, row, charge) whose settlement failed; retried on every heartbeat
        self._unsettled: dict[str, tuple[Account | None, RequestRecord, int]] = {}

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
    def hooks(self) -> Hooks:
        return self._hooks

    @hooks.setter
    def hooks(self, hooks: Hooks) -> None:
        self._hooks = hooks
        self.models.hooks = hooks   # loads are reported with the requests; those before this hook are replayed
        for name, entry in self.models.loaded.items():
            if not self.registry.specs[name].upstream:
                hooks.model_loaded(name, entry.load_seconds, True)

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

        The model asked for is checked as before; its ``fallbacks`` that cannot serve the request (not loaded,
        context too small, fields only an upstream serves) are left out. The hold covers the largest worst case.
        """
        # The model stays pinned (never unloaded) from here until the request settles.
        spec, backend = await self.models.acquire(ask.model, _allowed(ctx.account))
        pinned = True
        try:
            candidates = [await self._candidate(spec, backend, ask)]
            for name in spec.fallbacks:
                try:
                    candidates.append(await self._candidate(*self.backend(name, ctx.account), ask))
                except RequestError as e:
                    log.info("request %s: fallback %s left out (%s)", ctx.request_id, name, e.code)
            hold = max(c.hold for c in candidates)
            # The hold also carries what a sweeper needs should this server die: prompt tokens and prices (the
            # model asked for; a fallback runs only before anything reached the client).
            await self.db(self.ledger.reserve, ctx.account, ctx.request_id, hold, spec.name, ctx.endpoint,
                          candidates[0].prompt.n_tokens, (spec.price_input, spec.price_output))

            def on_end(final: Chunk) -> None:
                self.models.release(spec.name, ask.keep_alive)
                self._spawn(self._settle(ctx, final, gen, ask.stream))

            gen = Generation(spec.name, ctx.started, self.hooks, on_end=on_end,
                             on_progress=upkeep.progress_hook(self, ctx) if ask.stream and _holds(ctx.account)
                             else None)
            try:
                Attempts(candidates, gen, ctx.account.name if ctx.account else "", ctx.request_id).start()
            except OverloadedError as e:
                # Nothing ran: release the hold in the same step that logs the refusal.
                await self._close(ctx, spec, "rejected", e.code, 0)
                raise
            pinned = False   # the job runs: its end releases the model (on_end)
            return gen
        finally:
            if pinned:
                self.models.release(spec.name, ask.keep_alive)

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
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens; the {where} use {n}",
                param=where, model=spec.name)
        max_tokens = ask.sampling.max_tokens
        if max_tokens is None:
            max_tokens = min(limit - n, self.settings.max_tokens_cap)
        elif n + max_tokens > limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens; the {where} use {n} "
                f"and max_tokens asks for {max_tokens}", param="max_tokens", model=spec.name)
        # The worst case: every choice runs to max_tokens; the prompt is billed once (a local job shares its KV).
        hold = spec.cost(prompt.hold_tokens or prompt.n_tokens, max_tokens * prompt.choices)
        return Candidate(spec, backend, prompt, replace(ask.sampling, max_tokens=max_tokens), hold)

    async def start_embedding(self, ctx: RequestContext, ask: Ask) -> "Embedding":
        """Check and reserve an embeddings request (``ask.prompt``, billed as prompt tokens). Raises a
        RequestError; from the returned value on, the request owns its ledger row."""
        spec, backend = await self.models.acquire(ask.model, _allowed(ctx.account))
        try:
            if not hasattr(backend, "embed") or backend.info.passthrough:
                raise InvalidRequest(f"the model '{spec.name}' cannot make embeddings", param="model",
                                     model=spec.name)
            prompt = await backend.prepare(ask)
            limit = backend.info.ctx
            for i, tokens in enumerate(prompt.batch):
                if len(tokens) > limit:
                    raise ContextLengthExceeded(f"This model's maximum context length is {limit} tokens; input {i} "
                                                f"uses {len(tokens)}", param="input", model=spec.name)
            await self.db(self.ledger.reserve, ctx.account, ctx.request_id, spec.cost(prompt.n_tokens, 0),
                          spec.name, ctx.endpoint, prompt.n_tokens, (spec.price_input, spec.price_output))
        except BaseException:
            self.models.release(spec.name, ask.keep_alive)
            raise
        return Embedding(self, ctx, spec, backend, prompt, ask.keep_alive)

    async def reject(self, ctx: RequestContext, error: ReverbError, model: str | None = None) -> None:
        """Log a request refused before it ran. Never raises: a full disk must not turn a 4xx into a 500."""
        record = self._record(ctx, model or error.model, "rejected", error.code, Usage(0, 0))
        try:
            await self.db(self.ledger.log_rejected, ctx.account, record, ctx.client)
        except LedgerError as e:
            log.error("could not log rejected request %s: %s", ctx.request_id, e.message)
        self.hooks.settled(record, 0)

    async def _settle(self, ctx: RequestContext, final: Chunk, gen: Generation, stream: bool) -> None:
        spec = self.registry.resolve(gen.model)  # the model that ran: the one asked for, or a fallback
        usage = final.usage or Usage(0, 0)
        err = final.error
        code = err.code if isinstance(err, ReverbError) else ("engine_error" if err else None)
        status = _STATUS.get(final.finish_reason, "failed")
        charge = spec.cost(usage.prompt_tokens, usage.completion_tokens)
        try:
            gen.settled.set_result(await self._close(ctx, spec, status, code, charge, usage))
        except LedgerError as e:
            log.error("settlement failed for %s: %s", ctx.request_id, e.message)
            gen.settled.set_exception(e)
            # Retried later as failed: a stream delivered its text (charged), a blocking answer never left.
            if len(self._unsettled) < MAX_UNSETTLED:
                self._unsettled[ctx.request_id] = (ctx.account, self._record(
                    ctx, spec.name, "failed", e.code, usage), charge if stream else 0)
        except Exception:  # whatever went wrong, the request must end: as a ledger failure, never a hang
            log.exception("settlement failed for %s", ctx.request_id)
            gen.settled.set_exception(LedgerError("the ledger could not record this request"))

    async def _close(self, ctx: RequestContext, spec: ModelSpec, status: str, code: str | None, charge: int,
                     usage: Usage = Usage(0, 0)) -> Settlement:
        """Settle a request's hold with its row. Raises LedgerError (the hold then stays open)."""
        record = self._record(ctx, spec.name, status, code, usage)
        price = await self.db(self.ledger.settle, ctx.account, record, charge)
        self.hooks.settled(record, price)
        return Settlement(record, price)

    def _record(self, ctx: RequestContext, model: str | None, status: str, code: str | None,
                usage: Usage) -> RequestRecord:
        model = bounded_model(model, self.registry.specs)   # a name from a client is cut and flagged
        return RequestRecord(request_id=ctx.request_id, endpoint=ctx.endpoint, model=model, status=status,
                             error_code=code, prompt_tokens=usage.prompt_tokens,
                             completion_tokens=usage.completion_tokens, latency_ms=ctx.elapsed_ms(), body=ctx.body)

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
        self.models.close()
        self._db_pool.shutdown(wait=True)
        try:
            upkeep.retry_unsettled(self)
            self.ledger.lease.retire()   # a clean stop: whatever is still held is settled now
        except LedgerError as e:
            log.error("could not settle this server's holds at stop (its lease will expire): %s", e.message)
        self.ledger.close()


def _allowed(account: Account | None):
    """The account's model check (``Account.may_use`` where accounts carry allowlists), or None."""
    return getattr(account, "may_use", None)


def _holds(account: Account | None) -> bool:
    """Whether requests of this account put credit on hold (dev keys from the command line do not)."""
    return account is not None and not account.unlimited


class Embedding:
    """A reserved embeddings request; ``run`` computes the vectors and settles the ledger whatever happens.
    Like a Generation, it exposes ``model`` and ``settled`` (the access log reads them)."""

    def __init__(self, service: Service, ctx: RequestContext, spec: ModelSpec, backend: Backend, prompt,
                 keep_alive: float | None = None):
        self._service, self._ctx, self._spec, self._backend, self._prompt = service, ctx, spec, backend, prompt
        self._keep_alive = keep_alive
        self.model = spec.name
        self.settled: asyncio.Future[Settlement] = asyncio.get_running_loop().create_future()

    async def run(self) -> tuple[list[list[float]], Usage, int]:
        """(vectors, usage, price). Raises what the backend raises (nothing is charged then) or LedgerError."""
        svc, ctx, spec = self._service, self._ctx, self._spec
        try:
            vectors = await self._backend.embed(self._prompt)
        except BaseException as e:
            svc.models.release(spec.name, self._keep_alive)
            cancelled = isinstance(e, asyncio.CancelledError)
            code = None if cancelled else e.code if isinstance(e, ReverbError) else "engine_error"
            # shielded: a client that leaves mid-request must still leave its row and its refund behind
            closing = asyncio.ensure_future(svc._close(ctx, spec, "cancelled" if cancelled else "failed", code, 0))
            self._resolve(await asyncio.shield(closing))
            raise
        svc.models.release(spec.name, self._keep_alive)
        usage = Usage(self._prompt.n_tokens, 0)
        try:
            settlement = await svc._close(ctx, spec, "completed", None, spec.cost(usage.prompt_tokens, 0), usage)
        except LedgerError as e:
            self.settled.set_exception(e)
            self.settled.exception()  # retrieved: the handler raises it
            raise
        self._resolve(settlement)
        return vectors, usage, settlement.price

    def _resolve(self, settlement: Settlement) -> None:
        if not self.settled.done():
            self.settled.set_result(settlement)


def build(settings: Settings, backend_factory=None, *, serve: bool = True) -> Service:
    """Load the catalogue, the ledger, every local model named in ``settings.models`` (default: the catalogue's
    default; with ``--on-demand`` only those named, the rest on their first request) and every upstream entry
    (source = "openai": available from the start, nothing to load). A name that is not the catalogue's may be a
    GGUF file or ``hf.co/owner/repo[:QUANT]`` (``models/refs.py``).

    Raises ConfigError or ModelLoadError. ``backend_factory(spec, settings)`` makes one backend (default:
    ``loader.load_backend``). ``serve``: a server, which creates the ledger if needed, registers an instance with a
    lease and settles expired servers' holds; with False (``reverb chat``) the ledger must exist, no lease is
    taken and nothing is ever refunded.
    """
    reg, named = refs.resolve(registry_mod.load(settings.catalogue_path), settings.models)
    preload = named or ([] if settings.on_demand else [reg.default])
    ledger = Ledger(settings.db_target, dev_keys=settings.api_keys, busy_timeout=settings.db_busy_timeout,
                    max_mb=settings.db_max_mb, create=serve)
    models = Models(settings, reg, backend_factory, servable=[n for n in preload if not reg.specs[n].upstream])
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
    service = Service(settings, reg, ledger, models)
    if serve:
        models.on_event = service.model_event
    return service
