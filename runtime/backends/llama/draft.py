"""Draft tokens, verified: a request's prediction, the tokens its grammar forces, and n-gram guesses.

A generating slot's next token is decoded together with up to ``draft_max`` draft tokens after it, every row with
logits. The slot's own sampler (penalties, grammar, seed: the same chain, called in the same order) then samples
each row in turn: while the sampled token equals the draft token of the next row, that row's KV is already right
and the next row is sampled; at the first difference the sampled token is kept (it is the next token, as it would
have been without the draft) and the later rows' KV cells are dropped. So the answer is the one the request gives
without a draft, up to the numeric rules of ``shapes.py``: in deterministic mode a draft's rows are decoded only
where a lone row would take the same kernel path (positions below 256), so token for token; in the default mode a
draft's rows share a pass, which may change the last bits of the logits, as load does.

Where drafts come from, first that has one:

- **fast-forward**: the tokens the grammar forces after the next token (llguidance's ``compute_ff_tokens``);
- **prediction** (OpenAI's Predicted Outputs): the predicted text's tokens from where the output is in it. After a
  difference the output is re-aligned: it rejoins the prediction where its last three tokens appear next, only
  forward, so an edit (a changed line) costs a few steps and not the rest of the file;
- **n-gram** (``--speculate ngram``): the tokens that followed the last earlier occurrence of the output's last
  ``NGRAM`` tokens in the prompt and the output (quotes of a document, repeated code). After k guesses in a row of
  which none was accepted, the next 2^k - 1 steps (at most ``MAX_PAUSE``) make none: in new text they only cost.

Billing, as OpenAI bills predicted outputs: prediction tokens decoded and thrown away are ``rejected`` and billed
as completion tokens (at most the prediction's length minus those accepted, which the credit hold covers);
accepted ones are ordinary output. Fast-forward and n-gram drafts are the server's own guesses and never billed.

Nothing here knows about threads; the batcher calls ``propose`` when it plans a slot's row, ``admit`` before it
samples a row, ``settle`` after each decode call and ``bill`` when a slot retires.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import ReverbError
from ...types import Usage
from . import shapes

NGRAM = 3            # n-gram speculation: tokens of the output's end looked up in the prompt and output
FIRST_GUESS = 4      # n-gram speculation: the first draft's length
MAX_PAUSE = 32       # n-gram speculation: most steps without guessing after misses (1, 3, 7, ... in a row)
REALIGN = 3          # prediction: the output's last tokens that must appear in it again to rejoin it
PREDICTION, FORCED, GUESS = "prediction", "forced", "ngram"


@dataclass(eq=False)
class _Verify:
    """One slot's draft in the decode call now running: rows pos (the next token), pos+1.. (the draft)."""
    tokens: list[int]
    pos: int
    source: str
    seen: int = 0        # rows handed to the sampler so far
    accepted: int = 0
    open: bool = True


@dataclass(eq=False)
class _State:
    """One job's drafting state on one slot."""
    job: object
    prediction: tuple[int, ...]
    pairs: dict = field(default_factory=dict)   # prediction bigram -> indices after it, ascending
    at: int = 0              # prediction index expected next
    aligned: bool = True     # the output's last token followed the prediction
    seen: int = 0            # output tokens already aligned
    accepted: int = 0        # prediction tokens accepted (billing)
    rejected: int = 0        # prediction tokens decoded and thrown away
    grams: dict = field(default_factory=dict)   # n-gram of prompt + output -> index after its last occurrence
    indexed: int = 0
    length: int = 0          # the next draft's length: doubled on a full hit, else what was accepted + 1
    pause: int = 0           # n-gram: steps to go without guessing (after guesses of which none was accepted)
    misses: int = 0          # n-gram: guesses in a row of which none was accepted


class Drafter:
    def __init__(self, engine, *, draft_max: int = 0, deterministic: bool = False, fast_forward: bool = True,
                 ngram: bool = False):
        self.engine = engine
        self.draft_max = draft_max
        self.deterministic = deterministic
        self.fast_forward = fast_forward
        self.ngram = ngram
        self._states: dict[object, _State] = {}    # slot -> its job's state
        self._pending: dict[object, _Verify] = {}  # slot -> its draft in the running call
        self.drafted = {PREDICTION: 0, FORCED: 0, GUESS: 0}    # rows decoded as drafts, since start
        self.accepted = {PREDICTION: 0, FORCED: 0, GUESS: 0}   # of which accepted

    def totals(self) -> tuple[tuple[str, int, int], ...]:
        """(source, rows decoded as drafts, of which accepted) since start, per source."""
        return tuple((source, self.drafted[source], self.accepted[source]) for source in self.drafted)

    # -- planning -------------------------------------------------------------------------------------------

    def propose(self, slot, room: int) -> list[int]:
        """Draft tokens to decode after ``slot.next_token`` (at position ``len(slot.cached)``), at most ``room``
        (what max_tokens and the context leave). Remembers them for ``admit``."""
        if self.draft_max <= 0:
            return []
        job = slot.job
        state = self._states.get(slot)
        if state is None or state.job is not job:
            state = self._states[slot] = _State(job, tuple(getattr(job, "prediction", ())))
            state.pairs = _pairs(state.prediction)
            # A prediction is usually right (an edited file): its first draft is a long one; guesses start short.
            state.length = self.draft_max if state.prediction else FIRST_GUESS
        pos = len(slot.cached)
        most = min(self.draft_max, room)
        if self.deterministic:  # only where a lone row takes the path a draft's rows take (not KV-SPLIT: shapes.py)
            while most > 0 and shapes.kv_view(pos + most) >= shapes.SPLIT_MIN:
                most -= 1
        if most <= 0:
            return []
        source, draft = FORCED, self._forced(slot, most)
        if not draft and state.prediction:
            source, draft = PREDICTION, self._predicted(state, slot, min(most, state.length))
        if not draft and self.ngram:
            if state.pause > 0:
                state.pause -= 1
            else:
                source, draft = GUESS, self._guessed(state, slot, min(most, state.length))
        draft = self._before_end(draft)
        if draft:
            self._pending[slot] = _Verify(draft, pos, source)
            self.drafted[source] += len(draft)
        return draft

    def _forced(self, slot, most: int) -> list[int]:
        matcher = getattr(slot.sampler, "_grammar", None)  # engine.Sampler's matcher (guidance.Matcher)
        if not self.fast_forward or matcher is None:
            return []
        try:
            return matcher.forced()[:most]
        except ReverbError:  # over its bounds: the next sample says so, and ends this choice
            return []

    def _predicted(self, state: _State, slot, most: int) -> list[int]:
        pred = state.prediction
        out = slot.cached[len(slot.job.prompt):]
        out.append(slot.next_token)
        for tok in out[state.seen:]:
            state.aligned = state.at < len(pred) and pred[state.at] == tok
            if state.aligned:
                state.at += 1
        state.seen = len(out)
        if not state.aligned:
            state.aligned = self._realign(state, out)
        return list(pred[state.at:state.at + most]) if state.aligned else []

    @staticmethod
    def _realign(state: _State, out: list[int]) -> bool:
        """The first place at or after ``at`` where the prediction holds the output's last REALIGN tokens; moves
        ``at`` behind it. (Only forward: a prediction token is drafted again only after a rejection, and what a
        jump skips is lost, so the nearest match wins.)"""
        if len(out) < REALIGN:
            return False
        pred, tail = state.prediction, out[-REALIGN:]
        for after in state.pairs.get((out[-2], out[-1]), ()):
            if after - REALIGN >= state.at and list(pred[after - REALIGN:after]) == tail:
                state.at = after
                return True
        return False

    def _guessed(self, state: _State, slot, most: int) -> list[int]:
        history = slot.cached + [slot.next_token]
        grams = state.grams
        for i in range(max(state.indexed, NGRAM), len(history)):
            grams[tuple(history[i - NGRAM:i])] = i
        state.indexed = len(history)
        after = grams.get(tuple(history[-NGRAM:]))
        return history[after:after + most] if after is not None else []

    def _before_end(self, draft: list[int]) -> list[int]:
        for i, tok in enumerate(draft):
            if self.engine.is_eog(tok):  # the sampler ends the answer there: nothing to verify after it
                return draft[:i]
        return draft

    # -- after a decode call ------------------------------------------------------------------------------

    def admit(self, slot) -> bool:
        """Whether the sampler should sample the slot's next row of this call. Row 0 always; row j when the token
        sampled at row j-1 is the draft's j-th (that token is then in the KV already: it is taken onto
        ``cached`` and is no longer the slot's next token)."""
        v = self._pending.get(slot)
        if v is None:
            return True
        j, v.seen = v.seen, v.seen + 1
        if j == 0:
            return True
        if v.open and slot.next_token == v.tokens[j - 1]:
            slot.cached.append(slot.next_token)
            slot.next_token = None
            v.accepted += 1
            return True
        v.open = False
        return False

    def settle(self) -> None:
        """After a decode call's rows are sampled: drop the KV cells of rejected draft rows."""
        for slot in list(self._pending):
            self._close(slot)

    def bill(self, slot, usage: Usage) -> Usage:
        """A retiring slot's usage with its prediction tokens: rejected ones billed as completion tokens (at most
        the prediction's length minus those accepted). Forgets the slot's job."""
        self._close(slot)
        state = self._states.pop(slot, None)
        if state is None or state.job is not slot.job or not state.prediction:
            return usage
        rejected = min(state.rejected, len(state.prediction) - state.accepted)
        return Usage(usage.prompt_tokens, usage.completion_tokens + rejected,
                     accepted_prediction_tokens=state.accepted, rejected_prediction_tokens=rejected)

    def _close(self, slot) -> None:
        v = self._pending.pop(slot, None)
        if v is None:
            return
        keep = v.pos + 1 + v.accepted
        if v.accepted < len(v.tokens):
            self.engine.seq_remove(slot.seq, keep, -1)
        if not self.deterministic:  # as plan() does: generated rows are reusable in the default mode
            slot.reusable = len(slot.cached)
        self.accepted[v.source] += v.accepted
        state = self._states.get(slot)
        if state is None or v.source == FORCED:
            return
        if v.source == PREDICTION:
            state.accepted += v.accepted
            state.rejected += len(v.tokens) - v.accepted
        # A rejected row costs nearly what an accepted one gains on a compute-bound CPU: guesses grow only while
        # they hit (a prediction's after an edit, an n-gram's in new text).
        full = v.accepted == len(v.tokens)
        state.length = max(1, min(self.draft_max, 2 * len(v.tokens) if full else v.accepted + 1))
        if v.source == GUESS:  # a wasted guess costs a row of compute: after misses in a row, guess less often
            state.misses = 0 if v.accepted else state.misses + 1
            state.pause = min(MAX_PAUSE, 2 ** state.misses - 1) if state.misses else 0


def _pairs(prediction: tuple[int, ...]) -> dict:
    out: dict = {}
    for i in range(len(prediction) - 1):
        out.setdefault((prediction[i], prediction[i + 1]), []).append(i + 2)
    return out
