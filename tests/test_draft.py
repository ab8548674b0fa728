"""Draft tokens verified by the batcher (backends/llama/draft.py), driven directly over the fake engine: a
prediction's tokens are decoded in one call after the next token and kept only while the sampler agrees, the KV
holds exactly the kept tokens, the answer is the one without a draft, and accepted / rejected prediction tokens are
counted and billed. The real model's answers with and without drafts are compared in test_predict_e2e.py."""

from __future__ import annotations

from reverb.backends.llama.batcher import Batcher, Job
from reverb.backends.llama.draft import Drafter
from reverb.types import SamplingParams

from .fakes import EOS, FakeConfig, FakeEngine
from .test_batcher import NO_EOS, run

PROMPT = list(b"tell me the alphabet")


def make(deterministic=False, draft_max=8, ngram=False, slots=2) -> Batcher:
    engine = FakeEngine(config=FakeConfig(deterministic=deterministic))
    drafter = Drafter(engine, draft_max=draft_max, deterministic=deterministic, ngram=ngram)
    return Batcher(engine, slots=slots, ctx_per_slot=2048, prefill_chunk=128, max_queue=4, queue_timeout=60,
                   deterministic=deterministic, drafter=drafter)


def answer(b: Batcher, prompt=PROMPT, prediction=(), max_tokens=40, seed=1):
    j = Job(prompt=list(prompt), params=SamplingParams(max_tokens=max_tokens, logit_bias=NO_EOS, seed=seed),
            prediction=tuple(prediction))
    b.submit(j, 0.0)
    chunks = run(b)[j]
    return [t for c in chunks for t in c.text.encode()], chunks[-1].usage


def test_an_exact_prediction_is_accepted_in_few_calls_and_changes_nothing():
    plain, usage = answer(make(draft_max=0))
    b = make()
    got, u = answer(b, prediction=plain)
    assert got == plain
    assert u.accepted_prediction_tokens > 0 and u.rejected_prediction_tokens == 0
    assert u.completion_tokens == usage.completion_tokens == 40
    assert len(b.engine.calls) < 40 / 2  # drafts of up to 8 rows after the first few


def test_an_edited_prediction_rejoins_after_the_edit_and_rejected_tokens_are_billed():
    plain, usage = answer(make(draft_max=0), max_tokens=25)   # 25 different letters: one place to rejoin
    edited = plain[:8] + list(b"XYZ") + plain[10:]   # one change in the middle
    b = make()
    got, u = answer(b, prediction=edited, max_tokens=25)
    assert got == plain
    assert u.rejected_prediction_tokens > 0
    assert u.accepted_prediction_tokens > 8          # it rejoined after the edit
    assert u.completion_tokens == usage.completion_tokens + u.rejected_prediction_tokens
    assert u.accepted_prediction_tokens + u.rejected_prediction_tokens <= len(edited)
    # the rejected rows' KV cells were dropped (run() checks the slot's cache against the engine's after each step)
    assert b.engine.removed


def test_a_wrong_prediction_costs_rejections_bounded_by_its_length():
    plain, usage = answer(make(draft_max=0))
    wrong = [EOS - 1] * 5 + list(b"0123456789" * 3)
    got, u = answer(make(), prediction=wrong)
    assert got == plain
    assert u.accepted_prediction_tokens == 0
    assert u.rejected_prediction_tokens <= len(wrong)
    assert u.completion_tokens == usage.completion_tokens + u.rejected_prediction_tokens


def test_drafts_stop_at_max_tokens_and_the_context():
    plain, _ = answer(make(draft_max=0), max_tokens=7)
    b = make()
    got, u = answer(b, prediction=plain + list(b"more and more text"), max_tokens=7)
    assert got == plain and u.completion_tokens == 7 + u.rejected_prediction_tokens
    assert max(r[1] for call in b.engine.calls for r in call) < len(PROMPT) + 7   # no row past the last token


def test_deterministic_mode_drafts_only_below_position_256():
    """A lone generated row from position 256 on takes flash attention's KV-split path (shapes.py); a draft's
    rows share a pass, so past it they would come out differently: no drafts there."""
    long_prompt = list(b"x" * 300)
    plain, _ = answer(make(deterministic=True, draft_max=0), prompt=long_prompt)
    b = make(deterministic=True)
    got, u = answer(b, prompt=long_prompt, prediction=plain)
    assert got == plain
    assert u.accepted_prediction_tokens == u.rejected_prediction_tokens == 0
    b = make(deterministic=True)
    got, u = answer(b, prediction=answer(make(deterministic=True, draft_max=0))[0])
    assert u.accepted_prediction_tokens > 0
    assert all(r[1] < 256 for call in b.engine.calls for r in call if sum(x[3] for x in call) > 1)


def test_ngram_guesses_come_from_the_prompt_and_output():
    """The fake sampler writes the alphabet over and over: after one round, the output's own n-grams predict it."""
    plain, usage = answer(make(draft_max=0), max_tokens=80)
    b = make(ngram=True)
    got, u = answer(b, max_tokens=80)
    assert got == plain and u == usage                 # guesses are never billed
    assert dict((s, a) for s, _, a in b.drafter.totals())["ngram"] > 20
    assert len(b.engine.calls) < 60


def test_other_slots_run_beside_a_drafting_one():
    b = make(slots=2)
    plain, _ = answer(make(draft_max=0))
    j1 = Job(prompt=PROMPT, params=SamplingParams(max_tokens=40, logit_bias=NO_EOS, seed=1), prediction=tuple(plain))
    j2 = Job(prompt=list(b"another prompt here"), params=SamplingParams(max_tokens=30, logit_bias=NO_EOS, seed=3))
    b.submit([j1], 0.0)
    b.submit([j2], 0.0)
    out = run(b)
    assert [t for c in out[j1] for t in c.text.encode()] == plain
    solo, _ = answer(make(draft_max=0), prompt=b"another prompt here", max_tokens=30, seed=3)
    assert [t for c in out[j2] for t in c.text.encode()] == solo


def test_realignment_moves_only_forward():
    d = Drafter(FakeEngine(), draft_max=8)
    from reverb.backends.llama.draft import _State, _pairs
    pred = tuple(b"abcdefgh-abcdefgh-abcdefgh")
    s = _State(None, pred, _pairs(pred), at=10)
    assert d._realign(s, list(b"zzbcd")) and s.at == 13   # the first "bcd" at or after position 10
    s = _State(None, pred, _pairs(pred), at=25)
    assert not d._realign(s, list(b"zzbcd"))
    assert not d._realign(_State(None, pred, _pairs(pred)), list(b"cd"))   # too short to tell
