"""Cached prompt prefixes: host memory beyond the slots (promptcache.py), slot placement (placement.py), and the
rule that a prefix cached for one API key is never reused for another unless sharing is on."""

from __future__ import annotations

from reverb.backends.llama.placement import MIN_COPY
from reverb.backends.llama.promptcache import PromptCache

from .test_batcher import final, job, make, run

SYSTEM = list(range(1000, 1300))   # a long shared system prompt


def ask(prompt, tenant, **kw):
    j = job(prompt, **kw)
    j.tenant = tenant
    return j


def served(b, j):
    b.submit(j, 0)
    before = b.reused_tokens
    out = run(b)
    return out, b.reused_tokens - before


def test_a_prefix_cached_for_one_key_is_never_reused_for_another():
    b = make(slots=2, prompt_cache=PromptCache(1 << 30))
    served(b, ask(SYSTEM + [1], "alice"))
    out, reused = served(b, ask(SYSTEM + [2], "bob"))        # same system prompt, another key: computed afresh
    assert reused == 0 and not b.engine.copied and not b.engine.loaded
    _, reused = served(b, ask(SYSTEM + [3], "alice"))         # alice's own prefix still serves alice
    assert reused == len(SYSTEM)


def test_a_busy_slot_of_another_key_is_not_copied_and_host_memory_is_per_key():
    b = make(slots=2, prompt_cache=PromptCache(1 << 30))
    hog = ask(SYSTEM + [1], "alice", max_tokens=300)
    b.submit(hog, 0)
    b.admit(0)
    b.step()
    _, reused = served(b, ask(SYSTEM + [2], "bob", max_tokens=2))
    assert reused == 0 and not b.engine.copied
    # alice's conversation is pushed to host memory when her slot goes to bob; bob's next prompt does not find it
    b2 = make(slots=1, prompt_cache=PromptCache(1 << 30))
    served(b2, ask(SYSTEM + [1], "alice"))
    served(b2, ask(list(range(1, 200)), "bob"))
    assert len(b2.prompt_cache) == 1
    _, reused = served(b2, ask(SYSTEM + [5], "bob"))
    assert reused == 0 and not b2.engine.loaded


def test_sharing_lets_any_key_reuse_a_prefix():
    b = make(slots=2, prompt_cache=PromptCache(1 << 30, share=True))
    served(b, ask(SYSTEM + [1], "alice"))
    _, reused = served(b, ask(SYSTEM + [2], "bob"))
    assert reused == len(SYSTEM)


def test_a_displaced_conversation_comes_back_from_host_memory():
    b = make(slots=1, prompt_cache=PromptCache(1 << 30))
    turn1 = SYSTEM + list(range(1, 40))
    out, _ = served(b, ask(turn1, "alice", max_tokens=12))
    answer = list(out.keys())[0]
    history = list(b.slots[0].cached)                          # the prompt and all but the last answer token
    served(b, ask(list(range(1, 200)), "bob"))                 # another conversation takes the only slot
    assert len(b.prompt_cache) == 1 and b.prompt_cache.bytes > 0
    out, reused = served(b, ask(history + [7, 8, 9], "alice"))  # the next turn of alice's chat
    assert b.engine.loaded == [0] and reused == len(history)
    assert final(out[list(out.keys())[0]]).usage.prompt_tokens == len(history) + 3
    assert len(b.prompt_cache) == 1                              # bob's conversation took alice's place there
    assert answer is not None


def test_deterministic_mode_reuses_prompt_rows_only():
    b = make(slots=1, deterministic=True, prompt_cache=PromptCache(1 << 30))
    turn1 = SYSTEM + list(range(1, 40))
    served(b, ask(turn1, "alice", max_tokens=12))
    history = list(b.slots[0].cached)
    assert len(history) > len(turn1) and b.slots[0].reusable == len(turn1)
    _, reused = served(b, ask(history + list(range(500, 600)), "alice"))
    assert reused == len(turn1)                                 # the answer's rows came from another kernel path
    _, reused = served(b, ask(turn1, "alice"))                  # the same prompt: all but its last token
    assert reused == len(turn1) - 1


def test_new_jobs_take_slots_next_to_busy_ones():
    b = make(slots=4)
    b.submit(job(list(range(1, 20)), max_tokens=200), 0)
    b.admit(0)
    assert b.slots[0].job is not None
    b.slots[0].job.cancelled.set()
    b.step()                                                    # slot 0 free again (with a short cache)
    b.submit(job(list(range(1, 20)), max_tokens=200), 0)        # a little reuse is not worth a scattered slot
    b.submit(job(list(range(300, 320)), max_tokens=200), 0)
    b.admit(0)
    assert sorted(s.seq for s in b.slots if s.job is not None) == [0, 1]
    # a long cached prefix in a far slot does win its slot back
    b3 = make(slots=4)
    b3.slots[3].cached, b3.slots[3].reusable = SYSTEM[:MIN_COPY + 10], MIN_COPY + 10
    b3.engine.kv[3] = dict(enumerate(SYSTEM[:MIN_COPY + 10]))
    b3.submit(job(SYSTEM[:MIN_COPY + 10] + [1]), 0)
    b3.admit(0)
    assert b3.slots[3].job is not None and b3.reused_tokens == MIN_COPY + 10


def test_the_cache_keeps_within_its_budget_least_recently_used_first():
    c = PromptCache(budget_bytes=100)
    assert c.put("a", [1, 2, 3], 3, bytearray(40))
    assert c.put("a", [4, 5, 6], 3, bytearray(40))
    c.find("a", [1, 2, 3, 9], 10)                                # finding does not refresh: insertion order is LRU
    assert c.put("b", [7, 8], 2, bytearray(40))                  # over budget: the oldest entry goes
    assert c.bytes == 80 and c.find("a", [1, 2, 3, 9], 10)[0] is None
    assert c.find("a", [4, 5, 6, 9], 10)[1] == 3
    assert not c.put("a", [1], 1, bytearray(101))               # bigger than the whole budget: not kept
    assert c.put("a", [4, 5, 6, 7], 4, bytearray(10))            # extends an entry of the same key: replaces it
    assert len(c) == 2 and c.find("a", [4, 5, 6, 7], 10)[1] == 4
    assert not c.put("a", [4, 5], 2, bytearray(10))              # already held by a longer entry of that key
    assert c.find("b", [4, 5, 6, 7], 10) == (None, 0)            # and never visible to another key
    entry, n = c.find("a", [4, 5, 6, 7, 8], 3)
    assert n == 3 and c.take(entry) is entry and len(c) == 1
    assert not PromptCache(0).put("a", [1], 1, bytearray(1))     # budget 0: off


def test_a_few_shared_tokens_never_take_another_conversations_prefix_from_host_memory():
    # Chats that start alike ("<|im_start|>system\n...") share a few tokens: a new job that shares only those
    # recomputes them and leaves the saved conversation in host memory for its own next turn.
    b = make(slots=1, prompt_cache=PromptCache(1 << 30))
    head = [7, 8, 9]
    chat = head + list(range(2000, 2300))
    served(b, ask(chat + [1], "alice"))
    served(b, ask(list(range(3000, 3100)), "alice"))          # takes the slot: the chat goes to host memory
    assert len(b.prompt_cache) == 1
    _, reused = served(b, ask(head + list(range(4000, 4100)), "alice"))  # shares 3 tokens with the saved chat
    assert reused == 0 and not b.engine.loaded
    _, reused = served(b, ask(chat + [1, 2], "alice"))          # the chat's next turn still finds its prefix
    assert reused == len(chat) + 1 and b.engine.loaded


def test_a_prefix_used_in_part_stays_in_host_memory_for_its_own_conversation():
    b = make(slots=1, prompt_cache=PromptCache(1 << 30))
    served(b, ask(SYSTEM + list(range(1, 100)), "alice"))
    served(b, ask(list(range(5000, 5200)), "alice"))         # the first conversation goes to host memory
    _, reused = served(b, ask(SYSTEM + [42], "alice"))       # shares the system prompt only
    assert reused == len(SYSTEM)
    served(b, ask(list(range(6000, 6200)), "alice"))
    _, reused = served(b, ask(SYSTEM + list(range(1, 100)) + [7], "alice"))  # the whole first conversation
    assert reused == len(SYSTEM) + 99
