"""Continuous batching: one owner thread per model, the only place where threads meet the event loop.

The thread loops: retire cancelled jobs, admit waiting jobs into free slots (reusing a cached prefix), build one
batch with a decode token for every generating slot plus a bounded prefill chunk for slots still reading their
prompt, run the decode calls, sample each slot, and hand the step's text to the event loop in one
``call_soon_threadsafe`` (one wake-up per step, not per token). Admission is a bounded queue; a full queue or a
wait past the timeout gives OverloadedError.
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
        self._out: list[tuple[Job, Chunk]] = []
        self._thread = threading.Thread(target=self._run, name=f"reverb-{name}", daemon=True)
        self._thread.start()

    # -- any thread ---------------------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue a job. Raises OverloadedError when the wait queue is full or the scheduler is stopping."""
        with self._cv:
            if not self._running:
                raise OverloadedError("the server is shutting down", retry_after=5)
            free = sum(1 for s in self._slots if s.job is None)
            if len(self._waiting) >= free + self.max_queue:  # beyond the free slots, at most max_queue wait
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
                        self._emit(j, Chunk(finish_reason=FinishReason.CANCELLED, usage=Usage(0, 0)))
                    self._waiting.clear()
                    self._flush()
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
            self._flush()

    def _emit(self, job: Job, chunk: Chunk) -> None:
        self._out.append((job, chunk))

    def _flush(self) -> None:
        """Hand this step's chunks over: one call_soon_threadsafe per event loop, in order."""
        if not self._out:
            return
        out, self._out = self._out, []
        by_loop: dict = {}
        for job, chunk in out:
            if job.loop is None:
                job.deliver(chunk)
            else:
                by_loop.setdefault(job.loop, []).append((job, chunk))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver_all, items)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

    def _admit(self) -> None:
        now = time.monotonic()
        for job in list(self._waiting):
            if job.cancelled.is_set():
                self._waiting.remove(job)
                self._emit(job, Chunk(finish_reason=FinishReason.CANCELLED, usage=Usage(0, 0)))
            elif now - job.enqueued_at > self.queue_timeout:
                self._waiting.remove(job)
                self._emit(job, Chunk(finish_reason=FinishReason.ERROR, usage=Usage(0, 0),
                               error=OverloadedError("timed out waiting for a free slot", retry_after=2)))
        while self._waiting:
            free = [s for s in self._slots if s.job is None]
            if not free:
                return
            job = self._waiting.popleft()
            self._start(job, free)

    # Copying another slot's prefix costs a whole-stream copy; below this many shared tokens recomputing is cheaper.
    MIN_COPY = 128

    def _start(self, job: Job, free: list[_Slot]) -> None:
        prompt = job.prompt
        # Leave at least two prompt tokens to prefill: prompt positions are always computed in prefill calls of
        # 2+ rows (see _step), so a reused prefix gives exactly the tokens of a cold run.
        limit = max(0, len(prompt) - 2)
        slot = max(free, key=lambda s: _common_prefix(s.cached, prompt))
        shared = min(_common_prefix(slot.cached, prompt), limit)
        donor = None
        for s in self._slots:
            if s is not slot:
                n = min(_common_prefix(s.cached, prompt), limit)
                if n >= self.MIN_COPY and n > shared:
                    donor, shared = s, n
        if donor is not None:
            self.engine.seq_copy_prefix(donor.seq, slot.seq, shared)
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

    def _step(self) -> None:
        """One scheduling step: a decode call with one row per active sequence, then bounded prefill calls.

        Call shapes follow Engine.decode's rules (batch-invariant numerics): generated tokens are always rows of
        the decode call (one row per sequence); prompt tokens are always in prefill calls of 2..n_ubatch rows of
        one sequence, so a position is computed the same way whatever else runs. (A one-token prompt is the only
        prompt that rides in the decode call, and it always does.)
        """
        for s in self._slots:
            if s.job and s.job.cancelled.is_set():
                self._retire(s, FinishReason.CANCELLED)
        ub = self.engine.n_ubatch
        rows: list[tuple[_Slot, int, bool]] = []           # the decode call
        chunks: list[tuple[_Slot, list[int], bool]] = []   # prefill calls
        for s in self._slots:
            if s.job and s.next_token is not None:
                rows.append((s, s.next_token, True))
                s.next_token = None
        budget = self.engine.config.n_batch - len(rows)
        for s in self._slots:
            if not (s.job and s.todo) or budget <= 0:
                continue
            n = min(self.prefill_chunk, budget, len(s.todo))
            if len(s.todo) - n == 1:
                n -= 1  # never leave a single prompt token for a later step
            if n < 2 and len(s.todo) > 1:
                continue  # not enough budget left this step
            take = s.todo[:n]
            del s.todo[:n]
            budget -= n
            end = not s.todo
            if n == 1:
                rows.append((s, take[0], end))
                continue
            pieces = _pieces(take, ub)
            chunks.extend((s, piece, end and i == len(pieces) - 1) for i, piece in enumerate(pieces))
        if rows:
            items = []
            for s, tok, want in rows:
                items.append((tok, len(s.cached), s.seq, want))
                s.cached.append(tok)
            self.engine.decode(items)
            for i, (s, _, want) in enumerate(rows):
                if want and s.job:
                    self._sample(s, i)
        for s, piece, want in chunks:
            if not s.job:
                continue
            pos = len(s.cached)
            self.engine.decode([(tok, pos + i, s.seq, want and i == len(piece) - 1) for i, tok in enumerate(piece)])
            s.cached.extend(piece)
            if want:
                self._sample(s, len(piece) - 1)

    def _sample(self, s: _Slot, index: int) -> None:
        job = s.job
        tok = s.sampler.sample(index)
        if self.engine.is_eog(tok):
            self._retire(s, FinishReason.STOP)
            return
        s.generated += 1
        text = s.text.feed(self.engine.piece(tok))
        if text:
            self._emit(job, Chunk(text=text))
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
                self._emit(job, Chunk(text=rest))
        prefilled = len(job.prompt) - len(s.todo)
        usage = Usage(prompt_tokens=len(job.prompt) if prefilled else 0, completion_tokens=s.generated)
        self._emit(job, Chunk(finish_reason=reason, usage=usage, error=error))
        s.sampler.close()
        s.sampler = None
        s.job = None
        s.todo = []
        s.next_token = None


def _deliver_all(items: list) -> None:
    for job, chunk in items:
        job.deliver(chunk)


def _pieces(tokens: list[int], ub: int) -> list[list[int]]:
    """Split into runs of 2..ub tokens (len(tokens) >= 2): a one-row call would change the kernels' path."""
    out = [tokens[i:i + ub] for i in range(0, len(tokens), ub)]
    if len(out) > 1 and len(out[-1]) == 1:
        out[-2], out[-1] = out[-2][:-1], out[-2][-1:] + out[-1]
    return out


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    # compare in blocks first: prompts share long system prompts
    while i + 64 <= n and a[i:i + 64] == b[i:i + 64]:
        i += 64
    while i < n and a[i] == b[i]:
        i += 1
    return i
