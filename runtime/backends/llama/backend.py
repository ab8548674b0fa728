"""A GGUF model served in this process: llama.cpp engine + chat template + batcher + owner thread.

Implements the ``backends.Backend`` protocol. Loading treats the file as untrusted: header pre-check, then a
trial load in a child process, before llama.cpp sees it in the server process.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from ...errors import InvalidRequest, TemplateError
from ...models.registry import ModelSpec
from ...models.templates import CHATML, ChatTemplate
from ...request import Ask
from ...settings import Settings
from ...types import Chunk, Message, SamplingParams
from .. import Info, Prompt, Stats
from .batcher import Batcher, Job
from .bridge import ModelThread, Sink
from .promptcache import PromptCache


class LlamaBackend:
    def __init__(self, spec: ModelSpec, engine, template: ChatTemplate, thread: ModelThread, ctx: int):
        self.spec = spec
        self.engine = engine
        self.template = template
        self.thread = thread
        self.info = Info(name=spec.name, provider="llama.cpp", ctx=ctx, created=int(time.time()))

    @classmethod
    def load(cls, spec: ModelSpec, path, settings: Settings, engine_factory=None) -> "LlamaBackend":
        """Load a model and start its thread. Raises ModelLoadError (UnsafeModelFile for a rejected file)."""
        from .engine import Engine, EngineConfig  # llama_cpp is imported only once a model loads
        if engine_factory is None:  # a real llama.cpp load: untrusted file, check it and try it in a child first
            from ...models import ggufcheck
            from . import probe
            ggufcheck.check(path)
            if settings.probe_models:
                probe.check_in_child(path)
            engine_factory = Engine
        ctx = settings.ctx or spec.ctx
        config = EngineConfig(n_ctx=ctx, n_seq=settings.parallel, n_threads=settings.n_threads,
                              n_threads_batch=settings.n_threads_batch, n_batch=settings.batch,
                              n_ubatch=settings.ubatch, flash_attn=settings.flash_attn,
                              deterministic=settings.deterministic)
        engine = engine_factory(path, config)
        try:
            source = spec.chat_template or engine.chat_template() or CHATML
            template = ChatTemplate(source, bos_token=engine.bos_text, eos_token=engine.eos_text)
        except BaseException:
            engine.close()
            raise
        cache = PromptCache(int(settings.prompt_cache_mb * 2**20), share=settings.share_prompt_cache)
        batcher = Batcher(engine, slots=settings.parallel, ctx_per_slot=ctx, prefill_chunk=settings.prefill_chunk,
                          max_queue=settings.max_queue, queue_timeout=settings.queue_timeout,
                          deterministic=settings.deterministic, prompt_cache=cache)
        return cls(spec, engine, template, ModelThread(batcher, name=spec.name), ctx)

    def tokenize_chat(self, messages: tuple[Message, ...] | list[Message]) -> list[int]:
        """Render the template and tokenize it: template text with control tokens, user text without.

        Raises TemplateError. When the template reshaped message text so it cannot be cut out, the whole prompt
        is parsed with control tokens, and a message that spells one of them is refused rather than obeyed.
        """
        tokens: list[int] = [self.engine.bos()] if self.engine.add_bos() else []
        for seg in self.template.render(list(messages)):
            if seg.user is None:
                spelled = [t for t in self.engine.control_texts() if any(t in m.content for m in messages)]
                if spelled:
                    raise TemplateError(f"a message contains the control token text {spelled[0]!r}, which this "
                                        "model's chat template cannot carry safely", param="messages")
            tokens.extend(self.engine.tokenize(seg.text, special=not seg.user))
        return tokens

    async def prepare(self, ask: Ask) -> Prompt:
        n_vocab = self.engine.n_vocab
        if any(not 0 <= tok < n_vocab for tok, _ in ask.sampling.logit_bias):
            raise InvalidRequest(f"'logit_bias' token ids must be below {n_vocab}", param="logit_bias")
        # Rendering and tokenizing a long conversation takes milliseconds: keep it off the event loop.
        tokens = await asyncio.get_running_loop().run_in_executor(None, self.tokenize_chat, ask.messages)
        return Prompt(n_tokens=len(tokens), tokens=tuple(tokens))

    def submit(self, prompt: Prompt, params: SamplingParams, on_chunk: Callable[[Chunk], None],
               tenant: str) -> "_Handle":
        job = Job(prompt=list(prompt.tokens), params=params, tenant=tenant,
                  sink=Sink(deliver=on_chunk, loop=asyncio.get_running_loop()))
        self.thread.submit(job)
        return _Handle(job, self.thread)

    def stats(self) -> Stats:
        b = self.thread.batcher
        return Stats(waiting=len(b.waiting), active=b.active(), slots=len(b.slots), reused_tokens=b.reused_tokens,
                     cached_prompts=len(b.prompt_cache), cached_prompt_bytes=b.prompt_cache.bytes)

    def close(self) -> None:
        self.thread.stop()
        self.engine.close()


class _Handle:
    def __init__(self, job: Job, thread: ModelThread):
        self._job = job
        self._thread = thread

    def cancel(self) -> None:
        self._job.cancelled.set()
        self._thread.wake()
