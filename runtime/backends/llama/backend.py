"""A GGUF model served in this process: llama.cpp engine + chat template + batcher + owner thread.

Implements the ``backends.Backend`` protocol. Loading treats the file as untrusted: header pre-check, then a
trial load in a child process, before llama.cpp sees it in the server process.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

from ... import grammar
from ...errors import RETRY_BUSY, GrammarTooCostly, InvalidRequest, OverloadedError, TemplateError
from ...models.registry import ModelSpec
from ...models.templates import CHATML, ChatTemplate, thinks
from ...request import Ask
from ...settings import Settings
from ...types import Chunk, Message, SamplingParams, Tools
from .. import Counts, Info, Stats
from . import threads
from .batcher import Batcher, Job
from .bridge import ModelThread, Sink
from .draft import Drafter
from .output import Constraint
from .promptcache import PromptCache
from .reasoning import LEADING, OPENED, opens_thinking

if TYPE_CHECKING:
    from . import guidance


@dataclass(frozen=True)
class LlamaPrompt:
    """A request prepared for this model (``backends.Prepared``): its token sequences (one per prompt of
    /v1/completions and /v1/embeddings) and, once ``compile`` ran, its constraint (grammar and tool-call parser)."""

    counts: Counts
    batch: tuple[tuple[int, ...], ...]
    constraint: Constraint | None = None
    prediction: tuple[int, ...] = ()      # the request's predicted output, verified as drafts (draft.py)


class LlamaBackend:
    def __init__(self, spec: ModelSpec, engine, template: ChatTemplate, thread: ModelThread, ctx: int,
                 prepare_workers: int = 2, prepare_timeout: float = 30.0, max_waiting: int = 64,
                 grammar_cpu_s: float | None = None, split_reasoning: bool = True):
        self.spec = spec
        self.engine = engine
        self.template = template
        self.thread = thread
        self.info = Info(name=spec.name, provider="llama.cpp", ctx=ctx, created=int(time.time()),
                         key_slots=thread.batcher.slots_per_key)
        # Whether the template renders `tools` and `tool_calls` itself in the <tool_call> form the grammar and the
        # parser speak; otherwise the documented fallback is used.
        self.native_tools = grammar.use_native_tools(template.source)
        # A template that thinks (<think>...</think>), and whether its answers are split (docs/reasoning.md)
        self.thinks, self.split_reasoning = thinks(template.source), split_reasoning
        self._embed_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"reverb-embed-{spec.name}")
        self._embed_jobs: set[EmbeddingJob] = set()   # running or waiting, at most ``embedding_queue``
        self._embed_lock = threading.Lock()
        self.embedding_queue = 4
        # Preparation (rendering, tokenizing, compiling a grammar) runs after the credit hold, on a few threads of
        # its own, with a bounded number of requests waiting and a deadline each: see docs/structured-output.md.
        self._prep_pool = ThreadPoolExecutor(max_workers=prepare_workers, thread_name_prefix=f"reverb-prep-{spec.name}")
        self._prep_timeout, self._prep_max = prepare_timeout, max_waiting + prepare_workers
        self._prep_pending = 0
        self._vocab: guidance.Vocabulary | None = None
        self._vocab_lock = threading.Lock()
        self._grammar_cpu_s = grammar_cpu_s   # None: guidance.ANSWER_BUDGET_S

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
        plan = threads.ThreadPlan.from_flags(settings.threads, settings.threads_batch)
        # every slot's row and draft must fit in one decode call (draft.py)
        draft_max = max(0, min(settings.draft_max, settings.batch // settings.parallel - 1))
        config = EngineConfig(n_ctx=ctx, n_seq=settings.parallel, n_threads=plan.n_threads,
                              n_threads_batch=plan.n_threads_batch, n_batch=settings.batch,
                              n_ubatch=settings.ubatch, flash_attn=settings.flash_attn,
                              deterministic=settings.deterministic, outputs_per_seq=1 + draft_max)
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
                          deterministic=settings.deterministic, prompt_cache=cache,
                          slots_per_key=settings.key_slots, queue_per_key=settings.queue_per_key,
                          drafter=Drafter(engine, draft_max=draft_max, deterministic=settings.deterministic,
                                          fast_forward=settings.fast_forward, ngram=settings.speculate == "ngram"))
        follow = threads.EngineThreads(engine, plan) if plan.adapt or plan.adapt_batch else None
        backend = cls(spec, engine, template, ModelThread(batcher, name=spec.name, threads=follow), ctx,
                      prepare_workers=settings.prepare_workers, prepare_timeout=settings.prepare_timeout,
                      max_waiting=settings.max_queue, grammar_cpu_s=settings.grammar_cpu_ms / 1000,
                      split_reasoning=settings.split_reasoning)
        backend.embedding_queue = settings.embedding_queue
        backend._prep_pool.submit(backend.vocabulary)  # ~0.3 s, in the background: ready for the first grammar
        return backend

    def tokenize_chat(self, messages: tuple[Message, ...] | list[Message], tools: Tools | None = None,
                      thinking: bool | None = None) -> list[int]:
        """Render the template and tokenize it: template text with control tokens, user text without.

        ``tools`` (unless tool_choice is none) reach a template that supports them as Hugging Face's
        ``apply_chat_template`` passes them; for any other template, tools, assistant tool calls and tool results
        are rewritten into plain messages (grammar.fallback_messages). Raises TemplateError. When the template
        reshaped message text so it cannot be cut out, the whole prompt is parsed with control tokens, and a message
        that spells one of them is refused rather than obeyed. ``thinking`` is a thinking template's switch.
        """
        return self._chat_tokens(messages, tools, thinking)[0]

    def _chat_tokens(self, messages, tools: Tools | None, thinking: bool | None) -> tuple[list[int], str]:
        """The prompt's tokens, and for a thinking template its generation prompt (which may open <think>)."""
        offered = tools if tools is not None and tools.choice != "none" else None
        defs = None
        if not self.native_tools and (offered or any(m.tool_calls or m.role == "tool" for m in messages)):
            messages = grammar.fallback_messages(list(messages), offered)
        elif offered:
            defs = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                      "parameters": t.parameters or {"type": "object",
                                                                                     "properties": {}}}}
                    for t in offered.tools]
        # Tool definitions, call names and arguments, and earlier thoughts, are rendered as template text: none may
        # spell a control token.
        template_text = [json.dumps(defs or [], ensure_ascii=False)] + [
            json.dumps([m.name, m.tool_call_id, [(c.id, c.name, c.arguments) for c in m.tool_calls], m.reasoning],
                       ensure_ascii=False) for m in messages]
        self._refuse_control_text(template_text, "tools" if defs else "messages")
        tokens: list[int] = [self.engine.bos()] if self.engine.add_bos() else []
        segments = self.template.render(list(messages), tools=defs, thinking=thinking)
        for seg in segments:
            if seg.user is None:
                self._refuse_control_text([m.content for m in messages], "messages")
            tokens.extend(self.engine.tokenize(seg.text, special=not seg.user))
        if not self.thinks:
            return tokens, ""
        rendered = "".join(seg.text for seg in segments)
        return tokens, self.template.generation_prompt(list(messages), rendered, tools=defs, thinking=thinking)

    def _thinking_prompt(self, ask: Ask) -> tuple[list[int], str | None]:
        """A chat prompt for a thinking template, and how its answers are split (output.Constraint.reasoning).

        Thinking is off when the request asks (``Ask.thinking`` False) and when a grammar holds the answer from its
        first token (response_format, a required or named tool), so the constrained answer is never written inside
        ``<think>``: the template's switch (``enable_thinking``) turns it off, and a prompt still left inside
        ``<think>`` (a template with no switch, as the DeepSeek-R1 distills) gets an empty thought closed after it.
        """
        constrained = ask.response_format is not None or (ask.tools is not None and ask.tools.choice == "required")
        thinking = False if constrained else ask.thinking
        tokens, tail = self._chat_tokens(ask.messages, ask.tools, thinking)
        opened = opens_thinking(tail)
        if thinking is False and opened:
            tokens += self.engine.tokenize("\n</think>\n\n", special=True)
            opened = False
        return tokens, None if opened is False else OPENED if opened else LEADING

    def _refuse_control_text(self, texts: list[str], param: str) -> None:
        spelled = [t for t in self.engine.control_texts() if any(t in x for x in texts)]
        if spelled:
            raise TemplateError(f"the request contains the control token text {spelled[0]!r}, which this "
                                "model's chat template cannot carry safely", param=param)

    def tokenize_text(self, text: str) -> list[int]:
        """A raw prompt (/v1/completions, /v1/embeddings): plain text, never control tokens."""
        return ([self.engine.bos()] if self.engine.add_bos() else []) + self.engine.tokenize(text, special=False)

    async def prepare(self, ask: Ask) -> LlamaPrompt:
        """Render and tokenize on the preparation pool, within the deadline; the grammar is compiled later, by
        ``compile``, once credit is held. Raises RequestError or OverloadedError (too many waiting, or the deadline
        passed)."""
        n_vocab = self.engine.n_vocab
        if any(not 0 <= tok < n_vocab for tok, _ in ask.sampling.logit_bias):
            raise InvalidRequest(f"'logit_bias' token ids must be below {n_vocab}", param="logit_bias")
        slots = len(self.thread.batcher.slots)
        if ask.sampling.n > slots:
            raise InvalidRequest(f"'n' must be at most {slots} on this server (one slot per choice; see --parallel)",
                                 param="n")
        return await self._in_pool(self._prepare, ask)

    async def compile(self, prompt: LlamaPrompt, ask: Ask) -> LlamaPrompt:
        """The prompt with its constraint compiled: response_format and tools to GBNF (a keyword it cannot enforce
        is InvalidRequest naming it), then llguidance with bounded work (an over-bound grammar is GrammarTooCostly
        naming its schema path, with ``prompt_tokens`` set: the prompt was counted and is billed)."""
        if ask.response_format is None and ask.tools is None:
            return prompt
        try:
            constraint = await self._in_pool(self._compile, ask)
        except GrammarTooCostly as e:
            e.prompt_tokens = prompt.counts.n_tokens
            raise
        if prompt.constraint is not None:  # how a thinking template's answer is split (_thinking_prompt)
            mode = prompt.constraint.reasoning
            compiled = constraint.grammar if constraint is not None else None
            if compiled is not None and compiled.lazy:  # tools with auto: calls are watched for after the thought
                compiled = replace(compiled, think=mode)
            constraint = replace(constraint or Constraint(), grammar=compiled, reasoning=mode)
        return replace(prompt, constraint=constraint)

    async def _in_pool(self, fn, ask: Ask):
        if self._prep_pending >= self._prep_max:
            raise OverloadedError("too many requests are being prepared", retry_after=RETRY_BUSY)
        deadline = time.monotonic() + self._prep_timeout
        self._prep_pending += 1
        future = self._prep_pool.submit(fn, ask, deadline)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self._prep_timeout)
        except asyncio.TimeoutError:
            future.cancel()  # not started: it never runs; started: it stops at its next deadline check
            raise OverloadedError(f"preparing the request took longer than {self._prep_timeout:g} s",
                                  retry_after=RETRY_BUSY) from None
        finally:
            self._prep_pending -= 1

    def _prepare(self, ask: Ask, deadline: float = float("inf")) -> LlamaPrompt:
        _check_deadline(deadline)
        if ask.prompt is not None:
            batch = tuple(tuple(self.tokenize_text(text)) for text in ask.prompt)
            for i, tokens in enumerate(batch):
                if not tokens:
                    raise InvalidRequest("an empty prompt has no tokens to start from",
                                         param="prompt" if len(batch) == 1 else f"prompt[{i}]")
            counts = Counts(n_tokens=sum(map(len, batch)), lengths=tuple(map(len, batch)), choices=ask.choices,
                            streams=ask.choices)
            return LlamaPrompt(counts, batch)
        if self.thinks:
            tokens, split = self._thinking_prompt(ask)
            split = split if self.split_reasoning else None
        else:
            tokens, split = self.tokenize_chat(ask.messages, ask.tools), None
        tokens = tuple(tokens)
        prediction = tuple(self.engine.tokenize(ask.prediction, special=False)) if ask.prediction else ()
        if len(prediction) > self.info.ctx:
            raise InvalidRequest(f"'prediction' has {len(prediction)} tokens; this model's context is "
                                 f"{self.info.ctx}", param="prediction")
        return LlamaPrompt(Counts(n_tokens=len(tokens), choices=ask.choices, streams=ask.choices,
                                  predicted=len(prediction)), (tokens,),
                           constraint=Constraint(reasoning=split) if split else None, prediction=prediction)

    def _compile(self, ask: Ask, deadline: float = float("inf")) -> Constraint | None:
        _check_deadline(deadline)
        tools = ask.tools if ask.tools is not None and ask.tools.choice != "none" else None
        spec = (grammar.tool_grammar(tools, ask.response_format) if tools is not None
                else grammar.response_format_grammar(ask.response_format))
        parser = None
        if tools is not None:
            parser = functools.partial(grammar.ToolCallParser, frozenset(t.name for t in ask.tools.tools))
        _check_deadline(deadline)
        compiled = None
        if spec is not None:
            from . import guidance   # llguidance loads with the first grammar, not with every server start
            budget = self._grammar_cpu_s if self._grammar_cpu_s is not None else guidance.ANSWER_BUDGET_S
            compiled = guidance.compile_grammar(spec, self.vocabulary(), budget)
        return Constraint(compiled, parser) if compiled is not None or parser is not None else None

    def vocabulary(self) -> guidance.Vocabulary:
        """The model's vocabulary for grammar matching, built once (a fraction of a second)."""
        from . import guidance
        with self._vocab_lock:
            if self._vocab is None:
                pieces, eog = self.engine.vocabulary()
                self._vocab = guidance.Vocabulary(pieces, eog, lambda text: self.engine.tokenize(text, special=False))
            return self._vocab

    def submit(self, prompt: LlamaPrompt, params: SamplingParams, on_chunk: Callable[[Chunk], None],
               tenant: str, capped: bool = True) -> "_Handle":
        sink = Sink(deliver=on_chunk, loop=asyncio.get_running_loop())
        jobs = [Job(prompt=list(tokens), params=params, tenant=tenant, sink=sink, constraint=prompt.constraint,
                    first_index=i * params.n, capped=capped, prediction=prompt.prediction)
                for i, tokens in enumerate(prompt.batch)]
        self.thread.submit(*jobs)
        return _Handle(jobs, self.thread)

    def embedding_job(self, prompt: LlamaPrompt) -> "EmbeddingJob":
        """A place in this model's embeddings queue for ``prompt.batch``. Raises OverloadedError when
        ``embedding_queue`` requests are already running or waiting."""
        with self._embed_lock:
            if len(self._embed_jobs) >= self.embedding_queue:
                raise OverloadedError("too many embeddings requests are running or waiting; try again shortly",
                                      retry_after=RETRY_BUSY, model=self.spec.name)
            job = EmbeddingJob(self, prompt.batch)
            self._embed_jobs.add(job)
        return job

    def _embedded(self, job: "EmbeddingJob") -> None:
        with self._embed_lock:
            self._embed_jobs.discard(job)

    def stats(self) -> Stats:
        b = self.thread.batcher
        return Stats(waiting=len(b.waiting), active=b.active(), slots=len(b.slots), reused_tokens=b.reused_tokens,
                     cached_prompts=len(b.prompt_cache), cached_prompt_bytes=b.prompt_cache.bytes,
                     threads=self.thread.threads.counts()[0] if self.thread.threads else self.engine.config.n_threads,
                     drafts=b.drafter.totals())

    def close(self) -> None:
        with self._embed_lock:
            for job in self._embed_jobs:
                job.cancel()   # each stops within one chunk; what it computed is still billed
        self._embed_pool.shutdown(wait=True)
        self._prep_pool.shutdown(wait=True, cancel_futures=True)
        self.thread.stop()
        if self.thread.threads is not None:
            self.thread.threads.close()
        self.engine.close()


def _check_deadline(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise OverloadedError("preparing the request took longer than its deadline", retry_after=RETRY_BUSY)


class _Handle:
    def __init__(self, jobs: list[Job], thread: ModelThread):
        self._jobs = jobs
        self._thread = thread

    def cancel(self) -> None:
        for job in self._jobs:
            job.cancelled.set()
        self._thread.wake()


class EmbeddingJob:
    """One embeddings request on the model's embeddings thread (its own llama.cpp context, see Engine.embed),
    one input at a time in chunks: ``cancel`` stops it within one chunk, and ``computed`` says how many tokens
    were read, for the bill."""

    def __init__(self, backend: LlamaBackend, batch: tuple[tuple[int, ...], ...]):
        self._backend, self._batch = backend, batch
        self._stop = threading.Event()
        self.computed = 0
        self._future: asyncio.Future | None = None

    def cancel(self) -> None:
        self._stop.set()

    def release(self) -> None:
        """Give up a job that will not run (its request was refused)."""
        self._backend._embedded(self)

    def run(self) -> asyncio.Future:
        """Start (once) and return the future of the vectors, or of None when stopped early."""
        if self._future is None:
            self._future = asyncio.get_running_loop().run_in_executor(self._backend._embed_pool, self._compute)
        return self._future

    def _compute(self) -> list[list[float]] | None:
        try:
            vectors = []
            for tokens in self._batch:
                vec = self._backend.engine.embed(list(tokens), stop=self._stop.is_set, progress=self._add)
                if vec is None:
                    return None
                vectors.append(vec.tolist())
            return vectors
        finally:
            self._backend._embedded(self)

    def _add(self, n: int) -> None:
        self.computed += n
