"""The batch-shape rules against llama.cpp's real kernels (in process, the tiny model): in deterministic mode a
seeded job gives the same tokens alone, beside other jobs in any slot arrangement (past position 256, where a lone
row and a row sharing its pass take different attention kernels), from a prefix reused in its slot, and from host
memory."""

from __future__ import annotations

import pytest

from reverb.backends.llama import shapes
from reverb.backends.llama.batcher import Batcher, Job
from reverb.backends.llama.engine import Engine, EngineConfig
from reverb.backends.llama.promptcache import PromptCache
from reverb.types import SamplingParams

from .conftest import engine_threads

STORY = ("The lighthouse keeper climbed the spiral stairs each evening, counting the steps, listening to the sea "
         "below and the gulls above, and writing in his log what the weather had been and what ships had passed. ")


@pytest.fixture(scope="module")
def det_engine(model_path):
    n = engine_threads()
    eng = Engine(model_path, EngineConfig(n_ctx=1024, n_seq=4, n_threads=n, n_threads_batch=n, deterministic=True))
    yield eng
    eng.close()


def batcher(engine, slots=4, cache_mb=0) -> Batcher:
    for seq in range(4):
        engine.seq_remove(seq)
    return Batcher(engine, slots=slots, ctx_per_slot=1024, prefill_chunk=512, max_queue=16, queue_timeout=600,
                   deterministic=True, prompt_cache=PromptCache(cache_mb << 20))


def job(engine, text: str, max_tokens: int, seed: int = 5, endless: bool = False) -> Job:
    """``endless``: the end tokens banned, so the job runs to ``max_tokens`` (or until cancelled)."""
    prompt = engine.tokenize(text, special=False)
    ban = tuple((t, -100.0) for t in range(engine.n_vocab) if engine.is_eog(t)) if endless else ()
    return Job(prompt=prompt, params=SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=seed,
                                                    logit_bias=ban))


def step_until(b: Batcher, done, out: dict, limit: int = 5000) -> None:
    for _ in range(limit):
        b.admit(0)
        if done():
            return
        b.step()
        for j, chunk in b.take_events():
            out.setdefault(j, []).append(chunk)
    raise AssertionError("the batcher did not get there")


def text_of(out: dict, j: Job) -> str:
    chunks = out[j]
    assert chunks[-1].finish_reason is not None
    return "".join(c.text for c in chunks)


def ended(out, *jobs):
    return lambda: all(j in out and out[j][-1].finish_reason is not None for j in jobs)


def test_a_seeded_job_is_identical_alone_beside_others_and_from_a_reused_prefix(det_engine):
    eng = det_engine
    prompt_text = STORY * 7                                  # the prompt itself passes position 256: every token
    assert len(eng.tokenize(prompt_text, special=False)) > 256   # generated is past it (prefill is the cheap way)
    # alone
    b = batcher(eng)
    out: dict = {}
    alone = job(eng, prompt_text, 24)
    b.submit(alone, 0)
    step_until(b, ended(out, alone), out)
    reference = text_of(out, alone)
    assert len(eng.tokenize(reference, special=False)) > 12

    # beside others: three long-running jobs in slots 0-2 and the same prompt in slot 3 (so its slot keeps the
    # prefix), then again in slot 3 while slot 2 is free: alone in its run of sequences, past position 256
    b = batcher(eng)
    out = {}
    hogs = [job(eng, f"Write about topic number {i}.", 400, seed=i, endless=True) for i in range(3)]
    for h in hogs:
        b.submit(h, 0)
        b.admit(0)
    first = job(eng, prompt_text, 24)
    b.submit(first, 0)
    step_until(b, ended(out, first), out)
    assert text_of(out, first) == reference                 # beside three others (one pass of four)
    assert [s.seq for s in b.slots if s.job is hogs[2]] == [2]
    hogs[2].cancelled.set()
    again = job(eng, prompt_text, 24)
    reused = b.reused_tokens
    b.submit(again, 0)
    step_until(b, ended(out, again), out)
    assert b.reused_tokens - reused > 64                    # it took slot 3 back, with its cached prefix
    assert text_of(out, again) == reference
    for h in hogs:
        h.cancelled.set()
    step_until(b, lambda: not b.busy(), out)


def test_a_prefix_restored_from_host_memory_gives_the_same_tokens(det_engine):
    eng = det_engine
    b = batcher(eng, slots=1, cache_mb=256)
    out: dict = {}
    turn = job(eng, STORY * 5, 12)
    b.submit(turn, 0)
    step_until(b, ended(out, turn), out)
    cold = text_of(out, turn)
    other = job(eng, "Something else entirely. " * 20, 5)
    b.submit(other, 0)
    step_until(b, ended(out, other), out)
    assert len(b.prompt_cache) == 1                         # the first conversation went to host memory
    warm = job(eng, STORY * 5, 12)
    reused = b.reused_tokens
    b.submit(warm, 0)
    step_until(b, ended(out, warm), out)
    assert b.reused_tokens - reused > 64
    assert text_of(out, warm) == cold


def test_a_prompts_numbers_are_bitwise_the_same_however_it_is_cut_or_cached(det_engine):
    """The first tokens' log probabilities (top 5 too), to the last bit: a prompt just past position 256 (ONE-ROW
    rows to 256, TILED after) cold, from its own first 200 tokens cached (cut elsewhere), and from all of it
    cached (only its last row computed, in a TILED piece of re-read and throwaway rows). The default mode's shapes
    take TILED from the start, and other numbers: the comparison can tell them apart."""
    eng = det_engine
    prompt = eng.tokenize(STORY * 8, special=False)[:shapes.TILED_FROM + 8]

    def numbers(*prompts, deterministic=True):
        for seq in range(4):
            eng.seq_remove(seq)
        b = Batcher(eng, slots=1, ctx_per_slot=1024, prefill_chunk=512, max_queue=4, queue_timeout=600,
                    deterministic=deterministic, prompt_cache=PromptCache(0))
        got = []
        for p in prompts:
            out: dict = {}
            j = Job(prompt=p, params=SamplingParams(max_tokens=2, temperature=0, logprobs=True, top_logprobs=5))
            b.submit(j, 0)
            step_until(b, ended(out, j), out)
            got.append([lp for c in out[j] for lp in c.logprobs])
        return got[-1]

    cold = numbers(prompt)
    assert len(cold) == 2
    assert numbers(prompt[:200], prompt) == cold
    assert numbers(prompt, prompt) == cold
    assert numbers(prompt, deterministic=False) != cold
