"""Fair admission across keys, on the thread-free batcher over the fake engine: keys taken in turn, per-key caps on
busy slots and waiting jobs. The same attack on a real server is in test_admission_e2e.py."""

from __future__ import annotations

import pytest

from reverb.backends.llama.batcher import Job, SlotState
from reverb.errors import OverloadedError
from reverb.types import SamplingParams

from .test_batcher import NO_EOS, make


def job(tenant: str, prompt=(1, 2, 3), max_tokens=8, n=1) -> Job:
    return Job(prompt=list(prompt), params=SamplingParams(max_tokens=max_tokens, logit_bias=NO_EOS, seed=1, n=n),
               tenant=tenant)


def steps_to_first_text(b, target: Job, limit: int = 10_000) -> int:
    """Steps (admit + step) until ``target`` has sent text."""
    for i in range(1, limit):
        b.admit(0)
        b.step()
        if any(j is target and c.text for j, c in b.take_events()):
            return i
    raise AssertionError("no text")


def holders(b) -> list[str]:
    return [s.job.tenant for s in b.slots if s.job is not None]


def test_a_keys_many_jobs_wait_behind_another_keys_first_one():
    b = make(slots=2, max_queue=64, slots_per_key=2)
    hog = [job("hog", max_tokens=4) for _ in range(10)]
    b.submit(hog, 0)
    b.admit(0)
    assert holders(b) == ["hog", "hog"]
    victim = job("victim", max_tokens=4)
    b.submit(victim, 0)
    started = []
    while b.busy():
        b.admit(0)
        for s in b.slots:
            if s.job is not None and s.job not in started:
                started.append(s.job)
        b.step()
        b.take_events()
    # the victim's job starts at the first free slot, ahead of the eight hog jobs that were queued before it
    assert started.index(victim) == 2 and len(started) == 11


def test_keys_are_taken_in_turn():
    b = make(slots=1, max_queue=64)
    a = [job("a", max_tokens=2) for _ in range(3)]
    c = [job("c", max_tokens=2) for _ in range(3)]
    b.submit(a, 0)
    b.submit(c, 0)
    order = []
    while b.busy():
        b.admit(0)
        if b.slots[0].job is not None and b.slots[0].job not in order:
            order.append(b.slots[0].job)
        b.step()
        b.take_events()
    assert [j.tenant for j in order] == ["a", "c", "a", "c", "a", "c"]


def test_one_request_cannot_hold_every_slot():
    """The issue's attack: 32 prompts x n choices from one key; another key's request starts at once and its first
    token comes as soon as when it runs alone."""
    quiet = make(slots=4, max_queue=64, slots_per_key=3)
    alone = job("victim", max_tokens=4)
    quiet.submit(alone, 0)
    quiet_steps = steps_to_first_text(quiet, alone)

    b = make(slots=4, max_queue=64, slots_per_key=3, queue_per_key=32)
    b.submit([job("hog", prompt=range(1, 60), max_tokens=400, n=3) for _ in range(32)], 0)
    b.admit(0)
    assert holders(b).count("hog") == 3 and b.free_slots() == 1      # alone, it still leaves one slot free
    for _ in range(5):
        b.step()
        b.admit(0)
    victim = job("victim", max_tokens=4)
    b.submit(victim, 0)
    assert steps_to_first_text(b, victim) == quiet_steps


def test_a_job_of_more_choices_than_a_key_may_hold_is_refused():
    b = make(slots=4, slots_per_key=3)
    with pytest.raises(OverloadedError):
        b.submit(job("a", n=4), 0)
    assert not b.waiting


def test_a_key_may_queue_only_so_many_jobs_and_others_still_get_in():
    b = make(slots=1, max_queue=64, queue_per_key=3)
    b.submit([job("hog") for _ in range(3)], 0)
    with pytest.raises(OverloadedError):
        b.submit(job("hog"), 0)
    with pytest.raises(OverloadedError):   # all or none: a request of two prompts does not half-fit
        b.submit([job("hog2") for _ in range(4)], 0)
    assert b.waiting.count("hog2") == 0
    b.submit(job("other"), 0)
    b.admit(0)                             # one hog job starts: the key may queue one more
    b.submit(job("hog"), 0)
    assert b.waiting.count("hog") == 3


def test_a_key_at_its_cap_is_passed_over_but_a_big_job_whose_turn_it_is_is_not_overtaken():
    b = make(slots=4, max_queue=64, slots_per_key=3)
    b.submit([job("a", max_tokens=50), job("a", max_tokens=50), job("a", max_tokens=50), job("a")], 0)
    b.admit(0)
    assert holders(b) == ["a", "a", "a"]
    big, small = job("big", n=2), job("small")
    b.submit(big, 0)
    b.submit(small, 0)
    b.admit(0)
    # "a" is at its cap and passed over; "big" needs two slots and it is its turn: "small" waits behind it
    assert holders(b) == ["a", "a", "a"] and big in b.waiting and small in b.waiting
    out: dict = {}
    for _ in range(200):
        b.admit(0)
        for s in b.slots:
            if s.job is not None:
                out.setdefault(s.job.tenant, len(out))
        if not b.busy():
            break
        b.step()
        b.take_events()
    assert out["big"] < out["small"]
    assert all(s.state is SlotState.FREE for s in b.slots)


def test_the_operators_own_keys_are_not_capped_but_take_their_turn():
    b = make(slots=4, max_queue=64, slots_per_key=3, queue_per_key=2)
    op = [Job(prompt=[1, 2], params=SamplingParams(max_tokens=50, logit_bias=NO_EOS, seed=1, n=n), tenant="env:op",
              capped=False) for n in (4, 1, 1, 1)]
    b.submit(op, 0)                                  # n = every slot, and more queued than a capped key may
    b.admit(0)
    assert holders(b) == ["env:op"] * 4
    tenant = job("tenant", max_tokens=2)
    b.submit(tenant, 0)
    while op[0] in [s.job for s in b.slots]:
        b.step()
        b.take_events()
    b.admit(0)                                       # the operator's job ended: the tenant goes before its next
    assert "tenant" in holders(b) and tenant not in b.waiting
