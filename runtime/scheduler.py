"""Continuous batching: one owner thread per model, the only place where threads meet the event loop.

The thread loops: retire cancelled jobs, admit waiting jobs into free slots (reusing a cached prefix), build one
batch with a decode token for every generating slot plus a bounded prefill chunk for slots still reading their
prompt, run one ``llama_decode``, sample each slot, and hand text to each job's ``emit``. Admission is a bounded
queue; a full queue or a wait past the timeout gives OverloadedError.
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field

from .errors import EngineError, OverloadedError
from .textstream import TextStream
from .types import Chunk, FinishReason, Job, Usage

log = logging.getLogger("reverb.scheduler")


@dataclass
class _Slot:
    seq: int
    cached: list[int] = field(default_factory=list)   # tokens whose KV is in this sequence, in order
    job: Job | None = None
    sampler: object = None
    todo: list[int] = field(default_factory=list)     # prompt tokens still to prefill
    next_token: int | None = None                     # sampled, not yet decoded
    generated: int = 0
    text: TextStream | None = None
    logits_at: int = -1                               # batch index of this slot's logits in the last decode
    started: float = 0.0


@dataclass(frozen=True)
class SchedulerStats:
    waiting: int
    active: int
    slots: int
    reused_tokens: int


class Scheduler:
    """Owns an Engine from one thread. ``submit`` is safe from any thread."""

    def __init__(self, engine, *, slots: int, ctx_per_slot: int, prefill_chunk: int = 256,
                 max_queue: int = 64, queue_timeout: float = 60.0, name: str = "model"):
        self.engine = engine
        self.ctx_per_slot = ctx_per_slot
        self.prefill_chunk = prefill_chunk
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self._slots = [_Slot(seq=i) for i in range(slots)]
        self._waiting: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._running = True
        self.reused_tokens = 0
        self._thread = threading.Thread(target=self._run, name=f"reverb-{name}", daemon=True)
        self._thread.start()

    # -- any thread ---------------------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue a job. Raises OverloadedError when the wait queue is full or the scheduler is stopping."""
        with self._cv:
            if not self._running:
                raise OverloadedError("the server is shutting down", retry_after=5)
            free = sum(1 for s in self._slots if s.job is None)
            if len(self._waiting) >= self.max_queue + max(0, free - len(self._waiting)):
                raise OverloadedError("all slots are busy and the wait queue is full", retry_after=1)
            job.enqueued_at = time.monotonic()
            self._waiting.append(job)
            self._cv.notify()

    def wake(self) -> None:
        """Make the loop look at cancellation flags now (a client went away)."""
        with self._cv:
            self._cv.notify()

    def stats(self) -> SchedulerStats:
        return SchedulerStats(waiting=len(self._waiting), active=sum(1 for s in self._slots if s.job),
                              slots=len(self._slots), reused_tokens=self.reused_tokens)

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel everything, wait for the thread, free the engine."""
        with self._cv:
            self._running = False
            for s in self._slots:
                if s.job:
                    s.job.cancelled.set()
            for j in self._waiting:
                j.cancelled.set()
            self._cv.notify()
        self._thread.join(timeout)

    # -- owner thread -------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._running and not self._waiting and not any(s.job for s in self._slots):
                    self._cv.wait()
                if not self._running and not any(s.job for s in self._slots):
                    for j in self._waiting:
                        j.emit(Chunk(finish_reason=FinishReason.CANCELLED, usage=Usage(0, 0)))
                    self._waiting.clear()
                    return
                self._admit()
            try:
                self._step()
            except Exception as e:  # the engine failed: fail the running jobs, keep serving
                log.exception("decode step failed")
                for s in self._slots:
                    if s.job:
                        self._retire(s, FinishReason.ERROR, error=EngineError("generation failed"))
                        s.cached = []
                        self.engine.seq_remove(s.seq)
                if not isinstance(e, EngineError):
                    time.sleep(0.01)

    def _admit(self) -> None:
        now = time.monotonic()
        for job in list(self._waiting):
            if job.cancelled.is_set():
                self._waiting.remove(job)
                job.emit(Chunk(finish_reason=FinishReason.CANCELLED, usage=Usage(0, 0)))
            elif now - job.enqueued_at > self.queue_timeout:
                self._waiting.remove(job)
                job.emit(Chunk(finish_reason=FinishReason.ERROR, usage=Usage(0, 0),
                               error=OverloadedError("timed out waiting for a free slot", retry_after=2)))
        while self._waiting:
            free = [s for s in self._slots if s.job is None]
            if not free:
                return
            job = self._waiting.popleft()
            self._start(job, free)

    def _start(self, job: Job, free: list[_Slot]) -> None:
        prompt = job.prompt
        limit = len(prompt) - 1  # keep at least one token to decode, so there are logits to sample from
        best_free = max(free, key=lambda s: _common_prefix(s.cached, prompt))
        own = min(_common_prefix(best_free.cached, prompt), limit)
        donor, shared = None, own
        for s in self._slots:
            if s is not best_free:
                n = min(_common_prefix(s.cached, prompt), limit)
                if n > shared:
                    donor, shared = s, n
        slot = best_free
        if donor is not None:
            self.engine.seq_remove(slot.seq)
            self.engine.seq_copy(donor.seq, slot.seq, 0, shared)
            slot.cached = donor.cached[:shared]
        else:
            if not self.engine.seq_remove(slot.seq, shared, -1):
                self.engine.seq_remove(slot.seq)
                shared = 0
            slot.cached = slot.cached[:shared]
        self.reused_tokens += shared
        seed = job.params.seed if job.params.seed is not None else secrets.randbits(32)
        slot.job = job
        slot.sampler = self.engine.sampler(job.params, seed)
        slot.todo = prompt[shared:]
        slot.next_token = None
        slot.generated = 0
        slot.text = TextStream(job.params.stop)
        slot.started = time.monotonic()

    def _step(self) -> None:
        for s in self._slots:
            if s.job and s.job.cancelled.is_set():
                self._retire(s, FinishReason.CANCELLED)
        items: list[tuple[int, int, int, bool]] = []
        budget = self.engine.config.n_batch
        for s in self._slots:
            s.logits_at = -1
            if s.job and s.next_token is not None:
                s.logits_at = len(items)
                items.append((s.next_token, len(s.cached), s.seq, True))
                s.cached.append(s.next_token)
                s.next_token = None
                budget -= 1
        for s in self._slots:
            if s.job and s.todo and budget > 0:
                take = s.todo[: min(self.prefill_chunk, budget)]
                del s.todo[: len(take)]
                pos = len(s.cached)
                for i, tok in enumerate(take):
                    items.append((tok, pos + i, s.seq, False))
                s.cached.extend(take)
                budget -= len(take)
                if not s.todo:
                    s.logits_at = len(items) - 1
                    items[-1] = (items[-1][0], items[-1][1], s.seq, True)
        if not items:
            return
        self.engine.decode(items)
        for s in self._slots:
            if s.job and s.logits_at >= 0:
                self._sample(s)

    def _sample(self, s: _Slot) -> None:
        job = s.job
        tok = s.sampler.sample(s.logits_at)
        if self.engine.is_eog(tok):
            self._retire(s, FinishReason.STOP)
            return
        s.generated += 1
        text = s.text.feed(self.engine.piece(tok))
        if text:
            job.emit(Chunk(text=text))
        if s.text.stopped:
            self._retire(s, FinishReason.STOP)
        elif s.generated >= job.params.max_tokens or len(s.cached) + 1 >= self.ctx_per_slot:
            self._retire(s, FinishReason.LENGTH)
        else:
            s.next_token = tok

    def _retire(self, s: _Slot, reason: FinishReason, error: Exception | None = None) -> None:
        job = s.job
        if reason in (FinishReason.STOP, FinishReason.LENGTH):
            rest = s.text.flush()
            if rest:
                job.emit(Chunk(text=rest))
        prefilled = len(job.prompt) - len(s.todo)
        usage = Usage(prompt_tokens=len(job.prompt) if prefilled else 0, completion_tokens=s.generated)
        job.emit(Chunk(finish_reason=reason, usage=usage, error=error))
        s.sampler.close()
        s.sampler = None
        s.job = None
        s.todo = []
        s.next_token = None


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    # compare in blocks first: prompts share long system prompts
    while i + 64 <= n and a[i:i + 64] == b[i:i + 64]:
        i += 64
    while i < n and a[i] == b[i]:
        i += 1
    return i
