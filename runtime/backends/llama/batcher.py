"""Continuous batching without threads: admission into slots, prefix reuse, the batch plan, sampling, retirement.

``Batcher`` is driven by its owner (``bridge.ModelThread``): ``admit`` moves waiting jobs into free slots, taking
keys in turn within per-key caps (admission.py) and reusing a cached prefix (a job of ``n`` choices takes ``n``
slots at once: one reads the prompt, the others follow and get a copy of its KV when it is done, so the prompt is
computed once), ``step`` runs one decode call with a row for every
generating slot plus bounded prefill calls for slots still reading their prompt, and samples. What clients must see
comes out of ``take_events`` as (job, chunk) pairs. Nothing here knows about threads or event loops, so the unit
tests drive it directly.

How a step's rows become ``llama_decode`` calls is shapes.py's job (llama-server's shapes by default, fixed
kernel paths in deterministic mode); which slot a job takes and which cached prefix it starts from is
placement.py's.
"""

from __future__ import annotations

import enum
import secrets
import threading
from dataclasses import dataclass, field

from ...errors import RETRY_BUSY, RETRY_WAITED, GrammarTooCostly, OverloadedError, ReverbError
from ...types import Chunk, FinishReason, SamplingParams, Usage
from . import shapes
from .admission import FairQueue
from .draft import Drafter
from .output import ChoiceOutput, Constraint
from .placement import Placement
from .promptcache import PromptCache


@dataclass(eq=False)
class Job:
    """A generation request for one model. ``cancelled`` is set by whoever owns the request; the batcher checks
    it every step. ``sink`` belongs to the batcher's owner (where to deliver chunks)."""

    prompt: list[int]
    params: SamplingParams          # max_tokens resolved (an int); ``n`` choices
    tenant: str = ""                # whose request (the API key's name); see Backend.submit
    capped: bool = True             # the per-key caps apply (False: the operator's own key)
    constraint: Constraint | None = None  # grammar and tool-call parsing (output.py)
    prediction: tuple[int, ...] = ()      # the predicted output's tokens, verified as drafts (draft.py)
    first_index: int = 0            # choice index of the first of this job's n choices
    sink: object = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = 0.0


class SlotState(enum.Enum):
    FREE = "free"          # no job; ``cached`` may still hold a finished prompt's KV for reuse
    PREFILL = "prefill"    # reading its prompt (``todo`` not empty)
    FOLLOW = "follow"      # another choice of the job in the PREFILL slot: waits for a copy of that prompt's KV
    DECODE = "decode"      # generating: ``next_token`` is the sampled token to decode next


@dataclass(eq=False)
class Slot:
    seq: int
    state: SlotState = SlotState.FREE
    cached: list[int] = field(default_factory=list)   # tokens whose KV is in this sequence, in order
    owner: str = ""                                   # the tenant whose tokens ``cached`` holds
    reusable: int = 0     # leading cached tokens another prompt may reuse: in deterministic mode only prompt rows
    job: Job | None = None
    sampler: object = None
    todo: list[int] = field(default_factory=list)     # prompt tokens still to prefill
    next_token: int | None = None
    generated: int = 0
    out: ChoiceOutput | None = None
    index: int = 0                                    # the choice this slot generates
    followers: list["Slot"] = field(default_factory=list)  # PREFILL: the job's other choices, waiting for its KV


class Batcher:
    def __init__(self, engine, *, slots: int, ctx_per_slot: int, prefill_chunk: int, max_queue: int,
                 queue_timeout: float, deterministic: bool = False, prompt_cache: PromptCache | None = None,
                 slots_per_key: int | None = None, queue_per_key: int | None = None, drafter: Drafter | None = None):
        self.engine = engine
        self.drafter = drafter if drafter is not None else Drafter(engine)   # draft tokens, verified (draft.py)
        self.deterministic = deterministic
        self.prompt_cache = prompt_cache if prompt_cache is not None else PromptCache(0)
        self.placement = Placement(engine, self.prompt_cache)
        self.ctx_per_slot = ctx_per_slot
        self.tiled_from = shapes.tiled_from(ctx_per_slot)
        self.prefill_chunk = prefill_chunk
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.slots = [Slot(seq=i) for i in range(slots)]
        self.slots_per_key = min(slots, slots_per_key or slots)   # busy slots one key may hold (None: all)
        self.queue_per_key = queue_per_key                        # jobs one key may have waiting (None: no cap)
        self.waiting = FairQueue()
        self.reused_tokens = 0
        self._events: list[tuple[Job, Chunk]] = []

    # -- queue ----------------------------------------------------------------------------------------------

    def submit(self, jobs: Job | list[Job], now: float) -> None:
        """Queue jobs (of one tenant), all or none. Raises OverloadedError when more than ``max_queue`` jobs would
        wait beyond the free slots, the tenant would have more than ``queue_per_key`` jobs waiting, or a job has
        more choices than one key may hold slots."""
        jobs = [jobs] if isinstance(jobs, Job) else jobs
        if any(job.params.n > (self.slots_per_key if job.capped else len(self.slots)) for job in jobs):
            raise OverloadedError("a job has more choices than one key may hold slots", retry_after=RETRY_BUSY)
        if len(self.waiting) + len(jobs) - 1 >= self.free_slots() + self.max_queue:
            raise OverloadedError("all slots are busy and the wait queue is full", retry_after=RETRY_BUSY)
        if self.queue_per_key is not None:
            for tenant in {job.tenant for job in jobs if job.capped}:
                mine = sum(1 for job in jobs if job.tenant == tenant)
                if self.waiting.count(tenant) + mine > self.queue_per_key:
                    raise OverloadedError("this key has too many requests waiting for a slot", retry_after=RETRY_BUSY)
        for job in jobs:
            job.enqueued_at = now
            self.waiting.push(job)

    def free_slots(self) -> int:
        return sum(1 for s in self.slots if s.state is SlotState.FREE)

    def held_by(self, tenant: str) -> int:
        """Slots the tenant's running jobs hold."""
        return sum(1 for s in self.slots if s.job is not None and s.job.tenant == tenant)

    def active(self) -> int:
        return len(self.slots) - self.free_slots()

    def busy(self) -> bool:
        return bool(self.waiting) or self.active() > 0

    def take_events(self) -> list[tuple[Job, Chunk]]:
        out, self._events = self._events, []
        return out

    def _emit(self, job: Job, chunk: Chunk) -> None:
        self._events.append((job, chunk))

    # -- admission ------------------------------------------------------------------------------------------

    def admit(self, now: float) -> None:
        """Drop cancelled and timed-out waiting jobs, then start waiting jobs in free slots, keys in turn.

        Each key's oldest job in turn order: a key at its slot cap is passed over (it waits on its own jobs);
        the first other one starts if there are ``n`` free slots for it, else admission stops there, so a job of
        many choices is not overtaken for ever by smaller ones."""
        for job in list(self.waiting):
            if job.cancelled.is_set():
                self.waiting.remove(job)
                self._end_unstarted(job, FinishReason.CANCELLED)
            elif now - job.enqueued_at > self.queue_timeout:
                self.waiting.remove(job)
                self._end_unstarted(job, FinishReason.ERROR,
                                    OverloadedError("timed out waiting for a free slot", retry_after=RETRY_WAITED))
        while self.waiting:
            free = [s for s in self.slots if s.state is SlotState.FREE]
            for job in self.waiting.heads():
                if job.capped and self.held_by(job.tenant) + job.params.n > self.slots_per_key:
                    continue
                if len(free) < job.params.n:
                    return  # its turn: a job of n choices waits for n free slots
                self.waiting.take(job)
                self._start(job, free)
                break
            else:
                return  # every waiting key is at its cap

    def cancel_waiting(self) -> None:
        """Stopping: every waiting job ends cancelled, having used nothing."""
        for job in self.waiting.pop_all():
            self._end_unstarted(job, FinishReason.CANCELLED)

    def _end_unstarted(self, job: Job, reason: FinishReason, error: Exception | None = None) -> None:
        for i in range(job.params.n):
            self._emit(job, Chunk(finish_reason=reason, usage=Usage(0, 0), error=error, index=job.first_index + i))

    def _start(self, job: Job, free: list[Slot]) -> None:
        prompt = job.prompt
        slot, shared = self.placement.place(prompt, job.tenant, self.slots, free,
                                            shapes.recomputed(len(prompt)))
        self.reused_tokens += shared
        seed = job.params.seed if job.params.seed is not None else secrets.randbits(32)
        others = [s for s in free if s is not slot][:job.params.n - 1]
        try:
            for i, s in enumerate([slot, *others]):
                self._assign(s, job, i, seed + i)
        except ReverbError as e:  # llama.cpp refused a sampler (its grammar was checked at prepare: not expected)
            for s in (slot, *others):
                if s.sampler is not None:
                    s.sampler.close()
                s.sampler, s.job = None, None
            self._end_unstarted(job, FinishReason.ERROR, e)
            return
        slot.state = SlotState.PREFILL
        slot.todo = prompt[shared:]
        slot.followers = others
        for s in others:
            s.state = SlotState.FOLLOW

    def _assign(self, s: Slot, job: Job, i: int, seed: int) -> None:
        s.job = job
        s.index = job.first_index + i
        constraint = job.constraint
        s.sampler = self.engine.sampler(job.params, seed & 0xFFFFFFFF,
                                        grammar=constraint.grammar if constraint is not None else None)
        s.todo = []
        s.next_token = None
        s.generated = 0
        s.out = ChoiceOutput(s.index, job.params.stop, constraint)

    # -- one step -------------------------------------------------------------------------------------------

    def plan(self) -> list[shapes.Work]:
        """This step's work, in slot order: the next token of every generating slot, then prompt pieces within the
        batch budget (at most ``prefill_chunk`` tokens per slot, so a long prompt never stalls the running streams
        for long). Takes the planned tokens off each slot's ``todo`` / ``next_token`` onto ``cached``."""
        work: list[shapes.Work] = []
        for s in self.slots:
            if s.state is SlotState.DECODE:
                room = min(s.job.params.max_tokens - s.generated, self.ctx_per_slot - len(s.cached) - 1) - 1
                tokens = [s.next_token, *self.drafter.propose(s, room)]
                work.append(shapes.Work(s, s.seq, len(s.cached), tokens, prompt=False, sample=True,
                                        outputs=len(tokens)))
                s.cached.append(s.next_token)
                s.next_token = None
                if not self.deterministic:  # generated rows are as reusable as prompt rows here
                    s.reusable = len(s.cached)
        budget = self.engine.config.n_batch - sum(len(w.tokens) for w in work)
        for s in self.slots:
            if s.state is not SlotState.PREFILL:
                continue
            reread, n = shapes.prompt_take(len(s.todo), len(s.cached), min(self.prefill_chunk, budget),
                                           self.deterministic, self.tiled_from)
            if not n:
                continue
            if reread:  # deterministic mode: top a short last piece up with prompt tokens already in the cache
                self.engine.seq_remove(s.seq, len(s.cached) - reread, -1)
                s.todo[:0] = s.cached[-reread:]
                del s.cached[-reread:]
            take = s.todo[:reread + n]
            del s.todo[:reread + n]
            budget -= len(take)
            work.append(shapes.Work(s, s.seq, len(s.cached), take, prompt=True, sample=not s.todo))
            s.cached.extend(take)
            s.reusable = len(s.cached)  # prompt rows only so far
        return work

    def step(self) -> None:
        """Retire cancelled jobs, run this step's calls and sample. Raises what the engine raises."""
        for s in self.slots:
            if s.job is not None and s.job.cancelled.is_set():
                self.retire(s, FinishReason.CANCELLED)
        for call in shapes.calls(self.plan(), self.deterministic, self.engine.n_ubatch, self.tiled_from):
            self.engine.decode(call.rows)
            for seq, pos in call.trim:
                self.engine.seq_remove(seq, pos, -1)
            for s, i in call.outputs:
                if s.job is not None and self.drafter.admit(s):
                    self._sample(s, i)
            self.drafter.settle()

    def fail_running(self, error: Exception) -> None:
        """The engine failed mid-step: end every running job with ``error`` and forget their KV."""
        for s in self.slots:
            if s.job is not None:
                self.retire(s, FinishReason.ERROR, error=error)
            s.cached = []
            s.reusable = 0
            self.engine.seq_remove(s.seq)

    def _sample(self, s: Slot, index: int) -> None:
        if s.followers:  # the prompt is read: the job's other choices start from a copy of its KV and logits
            followers, s.followers = s.followers, []
            for f in followers:
                if f.job is s.job:
                    self.engine.seq_copy_prefix(s.seq, f.seq, len(s.cached))
                    f.cached, f.reusable, f.owner = list(s.cached), s.reusable, s.owner
                    self._sample(f, index)
        job = s.job
        try:
            tok = s.sampler.sample(index)
        except GrammarTooCostly as e:  # over its grammar's bounds: this choice ends, billed; the others run on
            self.retire(s, FinishReason.ERROR, error=e)
            return
        if tok < 0 or self.engine.is_eog(tok):  # < 0: the grammar allows nothing more
            self.retire(s, FinishReason.STOP)
            return
        s.generated += 1
        params = job.params
        logprob = self.engine.logprob(index, tok, params.top_logprobs) if params.logprobs else None
        chunk = s.out.feed(self.engine.piece(tok), logprob)
        if chunk is not None:
            self._emit(job, chunk)
        if s.out.stopped:
            self.retire(s, FinishReason.STOP)
        elif s.generated >= job.params.max_tokens or len(s.cached) + 1 >= self.ctx_per_slot:
            self.retire(s, FinishReason.LENGTH)
        else:
            s.next_token = tok
            s.state = SlotState.DECODE

    def retire(self, s: Slot, reason: FinishReason, error: Exception | None = None) -> None:
        job = s.job
        if reason in (FinishReason.STOP, FinishReason.LENGTH):
            rest = s.out.flush()
            if rest is not None:
                self._emit(job, rest)
            if reason is FinishReason.STOP and s.out.called:
                reason = FinishReason.TOOL_CALLS
        # The prompt is billed once, on the choice that read it, if it was read at all.
        read = s.index == job.first_index and len(job.prompt) > len(s.todo)
        usage = Usage(prompt_tokens=len(job.prompt) if read else 0, completion_tokens=s.generated)
        usage = self.drafter.bill(s, usage)   # with a prediction's rejected tokens (draft.py)
        self._emit(job, Chunk(finish_reason=reason, usage=usage, error=error, index=s.index,
                              stop=s.out.matched if reason is FinishReason.STOP else None))
        s.sampler.close()
        s.sampler = None
        s.job = None
        s.state = SlotState.FREE
        s.todo = []
        s.next_token = None
        s.followers = []  # a follower that never got its copy keeps its old, still valid, cached KV
