"""How a step's rows become llama_decode calls in the two modes (shapes.py), driven through the real batcher over
the recording fake engine. Which kernel path each shape takes on the real model is checked in
test_shapes_e2e.py."""

from __future__ import annotations

from reverb.backends.llama import shapes
from reverb.backends.llama.shapes import KV_PAD, SPLIT_MIN, TILE, TILED_FROM

from .test_batcher import final, job, make, run


def kinds(call):
    """'generated' (one sampled row per sequence) or 'prompt' (rows of one sequence, at most one sampled)."""
    return "generated" if all(r[3] for r in call) and len({r[2] for r in call}) == len(call) else "prompt"


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
        if kinds(call) == "prompt":                 # rows of one sequence, consecutive positions: ONE-ROW
            assert len({r[2] for r in call}) == 1       # (under TILE) before 256, TILED (TILE..ub) from there
            assert TILE <= len(call) <= ub if call[0][1] >= TILED_FROM else len(call) < TILE, call[:2]
            assert call[0][1] >= TILED_FROM or call[-1][1] < TILED_FROM
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
    # the one-token prompt ran as one row; the 70-token one in two ONE-ROW pieces; the 700-token one in
    # ONE-ROW pieces to position 256, then one TILED piece
    assert sum(c == [(5, 0, c[0][2], True)] for c in b.engine.calls) == 1
    assert [len(c) for c in b.engine.calls if len(c) > 1 and c[0][0] - c[0][1] == 100] == [35, 35]
    pieces = [(c[0][1], len(c)) for c in b.engine.calls if len(c) > 1 and c[0][0] - c[0][1] == 200]
    assert sum(n for at, n in pieces if at < TILED_FROM) == TILED_FROM and pieces[-1] == (TILED_FROM, 444)
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


def test_a_short_last_tiled_piece_rereads_cached_prompt_rows_in_deterministic_mode():
    b = make(slots=1, deterministic=True, prefill_chunk=64)
    j = job(list(range(1, 401)))          # 256 ONE-ROW rows, then TILED pieces of 64, 64 and 16 + 48 re-read
    b.submit(j, 0)
    out = run(b)
    tiled = [c for c in b.engine.calls if c[0][1] >= TILED_FROM and kinds(c) == "prompt"]
    assert [(c[0][1], len(c)) for c in tiled] == [(256, 64), (320, 64), (336, 64)]
    assert (0, 336, -1) in b.engine.removed and not any(r[1] >= 400 for c in tiled for r in c)
    assert final(out[j]).usage.prompt_tokens == 400


def test_cached_prompts_recompute_their_last_row_and_a_short_tiled_part_is_padded():
    b = make(slots=1, deterministic=True, prefill_chunk=512)
    for prompt in (list(range(1, 31)), list(range(1, 291))):
        for _ in range(2):     # the second time the slot holds the prompt
            b.submit(job(prompt, max_tokens=2), 0)
            run(b)
    n = b.engine.calls.count
    assert n([(30, 29, 0, True)]) == 1                      # before 256: the last row alone, ONE-ROW
    # past it: the last row's TILED piece, re-reading rows 256..288 and padded after the prompt's end to TILE rows
    last = [c for c in b.engine.calls if c[0][1] == TILED_FROM and len(c) == TILE]
    assert len(last) == 2 and [r[1] for r in last[1]] == list(range(TILED_FROM, TILED_FROM + TILE))
    assert sum(r[3] for r in last[1]) == 1 and last[1][289 - TILED_FROM][3]
    assert (0, 290, -1) in b.engine.removed                 # the throwaway rows are dropped right after the call


def test_prompt_take_and_cut():
    assert shapes.prompt_take(1000, 0, 512, False, TILED_FROM) == (0, 512)
    assert shapes.prompt_take(1000, 0, 512, True, TILED_FROM) == (0, 256)     # ONE-ROW rows up to 256
    assert shapes.prompt_take(1000, 100, 40, True, TILED_FROM) == (0, 40)     # any room will do for them
    assert shapes.prompt_take(530, 256, 512, True, TILED_FROM) == (0, 466)    # leaves a whole piece, not 18
    assert shapes.prompt_take(20, 456, 512, True, TILED_FROM) == (44, 20)     # a short last piece re-reads rows
    assert shapes.prompt_take(20, 266, 512, True, TILED_FROM) == (10, 20)     # from 256 on only (calls() pads it)
    assert shapes.prompt_take(100, 300, 40, True, TILED_FROM) == (0, 0)       # no room for a whole piece
    assert shapes.prompt_take(100, 300, 40, True, 4096) == (0, 40)            # a short context: ONE-ROW only
    assert shapes.tiled_from(2048) == TILED_FROM and shapes.tiled_from(300) == 300
    assert shapes._cut(530, 512) == [466, 64] and shapes._cut(30, 512) == [30]
    assert shapes._even(64, 63) == [32, 32] and shapes._even(1, 63) == [1] and shapes._even(127, 63) == [43, 42, 42]
    assert shapes.recomputed(1000) == 1 and shapes.recomputed(0) == 0
