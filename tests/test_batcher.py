"""The batcher's rules, driven directly (no threads, no model) over the fake engine that records every call.

The batch shapes of the two modes are in test_batch_shapes.py; host-memory prompt caching and tenant isolation in
test_prompt_cache.py."""

from __future__ import annotations

import pytest

from reverb.backends.llama.batcher import Batcher, Job, SlotState
from reverb.backends.llama.placement import MIN_COPY
from reverb.errors import OverloadedError
from reverb.types import FinishReason, SamplingParams

from .fakes import EOS, FakeConfig, FakeEngine

NO_EOS = ((EOS, -100.0),)


def make(slots=2, max_queue=4, queue_timeout=60.0, prefill_chunk=128, deterministic=False, **kw) -> Batcher:
    engine = FakeEngine(config=FakeConfig(deterministic=deterministic))
    return Batcher(engine, slots=slots, ctx_per_slot=2048, prefill_chunk=prefill_chunk, max_queue=max_queue,
                   queue_timeout=queue_timeout, deterministic=deterministic, **kw)


def job(prompt: list[int], max_tokens=8, **kw) -> Job:
    return Job(prompt=prompt, params=SamplingParams(max_tokens=max_tokens, logit_bias=NO_EOS, seed=1, **kw))


def run(b: Batcher, now: float = 0.0, steps: int = 10_000) -> dict:
    """Step until idle; returns {job: [chunks]}."""
    out: dict = {}
    for _ in range(steps):
        b.admit(now)
        if not b.busy():
            break
        b.step()
        check_kv(b)
        for j, chunk in b.take_events():
            out.setdefault(j, []).append(chunk)
    for j, chunk in b.take_events():
        out.setdefault(j, []).append(chunk)
    return out


def check_kv(b: Batcher) -> None:
    """What each slot believes it has cached is exactly what the engine holds (no pad rows left behind)."""
    for s in b.slots:
        assert b.engine.tokens(s.seq) == s.cached, s.seq
        assert s.reusable <= len(s.cached)


def final(chunks):
    return chunks[-1]


def test_a_cached_prefix_is_reused_but_the_last_prompt_token_is_always_recomputed():
    b = make(slots=1)
    system = list(range(10, 60))
    b.submit(job(system + [1, 2, 3]), 0)
    run(b)
    b.submit(job(system + [7, 8, 9]), 0)
    run(b)
    assert b.reused_tokens == len(system)
    assert (0, len(system), -1) in b.engine.removed
    b.submit(job(system + [7, 8, 9]), 0)   # the same prompt again: all but the last token reused
    before = b.reused_tokens
    run(b)
    assert b.reused_tokens - before == len(system) + 2


def test_a_long_prefix_is_copied_from_a_busy_slot():
    b = make(slots=2)
    system = list(range(1, 201))
    b.submit(job(system + [1], max_tokens=400), 0)        # holds slot 0 for a while
    b.admit(0)
    for _ in range(5):
        b.step()
    b.submit(job(system + [2]), 0)
    b.admit(0)
    assert b.engine.copied and b.engine.copied[0][:2] == (0, 1) and b.engine.copied[0][2] >= MIN_COPY


def test_cancelled_while_waiting_uses_nothing():
    b = make(slots=1)
    first, second = job([1, 2, 3], max_tokens=50), job([4, 5, 6])
    b.submit(first, 0)
    b.submit(second, 0)
    b.admit(0)
    second.cancelled.set()
    out = run(b)
    assert final(out[second]).finish_reason is FinishReason.CANCELLED
    assert final(out[second]).usage.prompt_tokens == 0 and final(out[second]).usage.completion_tokens == 0
    assert final(out[first]).finish_reason is FinishReason.LENGTH


def test_cancelled_during_prefill_counts_the_prompt_and_no_output():
    b = make(slots=1, prefill_chunk=32)
    j = job(list(range(1, 200)))
    b.submit(j, 0)
    b.admit(0)
    b.step()                                   # one chunk of the prompt
    assert b.slots[0].state is SlotState.PREFILL
    j.cancelled.set()
    out = run(b)
    end = final(out[j])
    assert end.finish_reason is FinishReason.CANCELLED
    assert end.usage.prompt_tokens == 199 and end.usage.completion_tokens == 0
    assert b.slots[0].state is SlotState.FREE and b.slots[0].job is None


def test_cancelled_while_decoding_counts_what_was_made():
    b = make(slots=1)
    j = job([1, 2, 3], max_tokens=500)
    b.submit(j, 0)
    b.admit(0)
    for _ in range(6):
        b.step()
    assert b.slots[0].state is SlotState.DECODE
    j.cancelled.set()
    out = run(b)
    end = final(out[j])
    assert end.finish_reason is FinishReason.CANCELLED
    assert 0 < end.usage.completion_tokens < 500
    assert "".join(c.text for c in out[j]) and len("".join(c.text for c in out[j])) == end.usage.completion_tokens


def test_the_queue_is_bounded_beyond_the_free_slots():
    b = make(slots=1, max_queue=1)
    b.submit(job([1, 2]), 0)
    b.submit(job([1, 2]), 0)                   # one for the free slot, one waiting
    with pytest.raises(OverloadedError):
        b.submit(job([1, 2]), 0)
    b.admit(0)                                 # the slot is taken: now only max_queue may wait
    with pytest.raises(OverloadedError):
        b.submit(job([1, 2]), 0)


def test_a_job_that_waits_too_long_ends_overloaded():
    b = make(slots=1, queue_timeout=5)
    first, late = job([1, 2, 3], max_tokens=3), job([4, 5])
    b.submit(first, 0)
    b.submit(late, 0)
    b.admit(0)
    b.admit(10)
    end = final([c for j, c in b.take_events() if j is late])
    assert end.finish_reason is FinishReason.ERROR and isinstance(end.error, OverloadedError)


def test_stop_strings_end_the_job_and_are_never_sent():
    b = make(slots=1)
    j = job([1, 2], max_tokens=30, stop=("def",))   # the fake writes b, c, d, e, f, ... in turn
    b.submit(j, 0)
    out = run(b)
    text = "".join(c.text for c in out[j])
    assert final(out[j]).finish_reason is FinishReason.STOP
    assert "def" not in text and text.endswith("c")


def test_an_engine_failure_ends_running_jobs_and_frees_their_slots():
    b = make(slots=2)
    j = job([1, 2, 3], max_tokens=50)
    b.submit(j, 0)
    b.admit(0)
    b.step()
    b.fail_running(RuntimeError("boom"))
    end = final([c for jj, c in b.take_events() if jj is j])
    assert end.finish_reason is FinishReason.ERROR and str(end.error) == "boom"
    assert all(s.state is SlotState.FREE and not s.cached for s in b.slots)


def ends(chunks) -> dict:
    return {c.index: c for c in chunks if c.finish_reason is not None}


def test_n_choices_read_the_prompt_once_and_share_its_kv():
    b = make(slots=3)
    prompt = list(range(1, 40))
    j = job(prompt, max_tokens=5, n=3)
    b.submit(j, 0)
    out = run(b)
    prompt_rows = [row for call in b.engine.calls for row in call if row[1] < len(prompt)]
    assert len(prompt_rows) == len(prompt) and {row[2] for row in prompt_rows} == {0}  # read once, by one slot
    assert sorted(b.engine.copied) == [(0, 1, len(prompt)), (0, 2, len(prompt))]
    done = ends(out[j])
    assert sorted(done) == [0, 1, 2]
    assert [done[i].usage.prompt_tokens for i in range(3)] == [len(prompt), 0, 0]   # billed once
    assert all(done[i].usage.completion_tokens == 5 for i in range(3))
    by_choice = {i: "".join(c.text for c in out[j] if c.index == i) for i in range(3)}
    assert all(len(t) == 5 for t in by_choice.values())
    decode_positions = {row[1] for call in b.engine.calls for row in call if row[2] in (1, 2)}
    assert min(decode_positions) == len(prompt)  # the followers start right after the copied prompt


def test_a_job_of_n_choices_waits_for_n_free_slots():
    b = make(slots=2)
    busy = job([1, 2, 3], max_tokens=6)
    pair = job([4, 5, 6], max_tokens=2, n=2)
    b.submit(busy, 0)
    b.submit(pair, 0)
    b.admit(0)
    assert [s.job for s in b.slots].count(busy) == 1 and pair in b.waiting
    out = run(b)
    assert sorted(ends(out[pair])) == [0, 1]


def test_cancelling_a_job_of_n_choices_ends_every_choice():
    b = make(slots=2, prefill_chunk=32)
    j = job(list(range(1, 200)), n=2)
    b.submit(j, 0)
    b.admit(0)
    b.step()
    assert {s.state for s in b.slots} == {SlotState.PREFILL, SlotState.FOLLOW}
    j.cancelled.set()
    done = ends(run(b)[j])
    assert sorted(done) == [0, 1] and all(c.finish_reason is FinishReason.CANCELLED for c in done.values())
    assert done[0].usage.prompt_tokens == 199 and done[1].usage.prompt_tokens == 0
    assert all(s.state is SlotState.FREE for s in b.slots)


def test_several_jobs_are_queued_all_or_none():
    b = make(slots=1, max_queue=1)
    with pytest.raises(OverloadedError):
        b.submit([job([1, 2]), job([3, 4]), job([5, 6])], 0)
    assert not b.waiting
    second = Job(prompt=[3, 4], params=SamplingParams(max_tokens=2, logit_bias=NO_EOS, n=2), first_index=2)
    b = make(slots=2)
    first = job([1, 2], max_tokens=2, n=2)
    b.submit([first, second], 0)
    out = run(b)
    assert sorted(ends(out[first])) == [0, 1] and sorted(ends(out[second])) == [2, 3]


def test_the_choices_of_a_job_leave_their_prompt_to_its_tenant_only():
    b = make(slots=2)
    prompt = list(range(1, 200))
    j = job(prompt, max_tokens=3, n=2)
    j.tenant = "alice"
    b.submit(j, 0)
    run(b)
    assert all(s.owner == "alice" and s.cached[:len(prompt)] == prompt for s in b.slots)
    other = job(prompt + [7], max_tokens=2)
    other.tenant = "mallory"
    b.submit(other, 0)
    run(b)
    assert b.reused_tokens == 0  # nothing of alice's prompt is reused for another key
    again = job(prompt + [7], max_tokens=2)
    again.tenant = "alice"
    b.submit(again, 0)
    run(b)
    assert b.reused_tokens == len(prompt)
