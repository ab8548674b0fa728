"""How a step's rows become llama_decode calls in the two modes (shapes.py), driven through the real batcher over
the recording fake engine. Which kernel path each shape takes on the real model is checked in
test_shapes_e2e.py."""

from __future__ import annotations

from reverb.backends.llama import shapes
from reverb.backends.llama.shapes import KV_PAD, SPLIT_MIN, TILE

from .test_batcher import final, job, make, run


def kinds(call):
    """'prompt' (TILE+ rows of one sequence) or 'generated' (one row per sequence)."""
    return "prompt" if len({r[2] for r in call}) == 1 and len(call) >= TILE else "generated"


def test_deterministic_mode_keeps_every_row_on_one_kernel_path():
    b = make(slots=4, deterministic=True, prefill_chunk=512)
    lone = job(list(range(1, 40)), max_tokens=300)          # decodes past position 256 for a while
    b.submit(lone, 0)
    b.admit(0)
    for _ in range(3):
        b.step()
    jobs = [job([5]), job(list(range(100, 170))), job(list(range(200, 900)), max_tokens=20)]
    for j in jobs:
        b.submit(j, 0)
    out = run(b)
    ub = b.engine.n_ubatch
    long_rows = 0
    for call in b.engine.calls:
        if kinds(call) == "prompt":                 # TILE..ub rows of one sequence, consecutive positions
            assert TILE <= len(call) <= ub, len(call)
            positions = [r[1] for r in call]
            assert positions == list(range(positions[0], positions[0] + len(call)))
            assert sum(r[3] for r in call) <= 1
            continue
        assert all(r[3] for r in call)              # generated rows: one per sequence, no throwaway rows
        assert len({r[2] for r in call}) == len(call)
        if any(shapes.kv_view(r[1]) >= SPLIT_MIN for r in call):
            assert len(call) == 1                   # KV-SPLIT from position 256: alone in its call, always
            long_rows += 1
        else:
            assert all(r[1] < KV_PAD for r in call)
    assert long_rows and shapes.kv_view(255) < SPLIT_MIN <= shapes.kv_view(256)
    # the one-token prompt ran as one piece of TILE rows (padded), the 700-token one as two whole pieces
    assert any(c[0][0] == 5 and c[0][1] == 0 and len(c) == TILE for c in b.engine.calls)
    assert [len(c) for c in b.engine.calls if kinds(c) == "prompt" and 200 <= c[0][0] < 900] == [512, 188]
    for j in [lone, *jobs]:
        assert final(out[j]).usage.completion_tokens == j.params.max_tokens
        assert final(out[j]).usage.prompt_tokens == len(j.prompt)


def test_default_mode_runs_each_step_as_one_call_of_every_slot():
    b = make(slots=3, prefill_chunk=512)
    long = job(list(range(1, 1301)), max_tokens=4)
    b.submit(job(list(range(1, 30)), max_tokens=40), 0)
    b.admit(0)
    b.step()                                          # slot 0 is generating now
    b.submit(long, 0)
    b.submit(job(list(range(50, 90))), 0)
    run(b)
    calls = b.engine.calls
    # one call per step: the generating slot's row, the long prompt's first 512 tokens and the short prompt share it
    first = calls[1]
    assert {r[2] for r in first} == {0, 1, 2}
    assert sum(1 for r in first if r[2] == 1) == 512 and sum(1 for r in first if r[2] == 2) == 40
    assert [r[2] for r in first] == sorted(r[2] for r in first)
    # the 1300-token prompt went in pieces of 512, 512, 276, and no call carried a throwaway row: every prompt
    # token once, every generated token but the last once
    assert [sum(1 for r in c if r[2] == 1 and r[1] < 1300) for c in calls[1:4]] == [512, 512, 276]
    assert sum(len(c) for c in calls) == (29 + 39) + (1300 + 3) + (40 + 7)


def test_a_short_last_piece_rereads_cached_prompt_tokens_in_deterministic_mode():
    b = make(slots=1, deterministic=True, prefill_chunk=64)
    j = job(list(range(1, 101)))                     # 100 tokens in pieces of at most 64: 64, then 36 + 28 re-read
    b.submit(j, 0)
    out = run(b)
    prompt_calls = [c for c in b.engine.calls if kinds(c) == "prompt"]
    assert [len(c) for c in prompt_calls] == [64, 64]
    assert prompt_calls[1][0][1] == 100 - 64 and (0, 36, -1) in b.engine.removed
    assert final(out[j]).usage.prompt_tokens == 100


def test_prompt_take_and_cut():
    assert shapes.prompt_take(1000, 0, 512, False) == (0, 512)
    assert shapes.prompt_take(530, 0, 512, True) == (0, 466)      # leaves a whole piece, not 18 tokens
    assert shapes.prompt_take(20, 200, 512, True) == (44, 20)     # a short last piece re-reads cached rows
    assert shapes.prompt_take(20, 10, 512, True) == (10, 20)      # (and is padded to TILE by calls())
    assert shapes.prompt_take(100, 0, 40, True) == (0, 0)         # no room for a whole piece this step
    assert shapes._cut(530, 512) == [466, 64] and shapes._cut(30, 512) == [30]
    assert shapes.recomputed(1000, True) == TILE and shapes.recomputed(1000, False) == 1
    assert shapes.recomputed(10, True) == 10
