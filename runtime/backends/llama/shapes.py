"""The batch-shape rules: how one step's work becomes ``llama_decode`` calls, in the two modes.

What llama.cpp's CPU backend does with a call (llama.cpp as vendored by llama-cpp-python 0.3.36; checked row by
row on the real model by tests/test_shapes_e2e.py):

- It cuts a call into compute passes of at most n_ubatch rows. With one KV stream per sequence, a pass holds
  the same number of rows from each of a run of consecutive sequence ids (``split_equal``), so rows are listed
  in sequence order and a lone sequence gets a pass of its own.
- Matrix products give a row the same numbers whatever shares its pass (with plain weight layouts: see
  ``EngineConfig.deterministic``).
- Flash attention takes one of three paths, and a row's numbers depend on the path: TILED when a pass holds at
  least ``TILE`` rows per sequence; KV-SPLIT when a pass holds one row of one sequence whose KV view has at least
  ``SPLIT_MIN`` cells (the view is the used cells rounded up to ``KV_PAD``: from position 256 on); ONE-ROW
  otherwise. Within one path a row's numbers do not depend on its neighbours, nor on where a prompt was cut.

Default mode builds llama-server's shapes: one call per step holding every row (each generating slot's token and
every prompt piece), so long prompts run in large passes, several slots' prompts share a pass and a lone stream
takes the fast KV-split path. A row's path then depends on what else runs, so seeded output can vary with load.

Deterministic mode fixes each row's path by its position alone. Prompt rows always run TILED: each prompt piece is
a call of its own of ``TILE``..n_ubatch rows of one sequence (a short last piece re-reads cached prompt tokens,
which come out the same on this path; a prompt shorter than ``TILE`` is topped up with throwaway rows after its
end, dropped from the KV cache right after the call). A generated row before position 256 runs ONE-ROW, in one call
with the other such rows; from position 256 on it runs KV-SPLIT, in a call of its own. (The other way, ONE-ROW
from 256 on with a throwaway partner row for a stream alone in its pass, costs a third more per token to a lone
long conversation; this way costs several long conversations decoding at once a pass each.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

TILE = 64         # GGML_FA_TILE_Q: flash attention's tiled path from this many rows per sequence in a pass
KV_PAD = 256      # llama_kv_cache::get_n_kv rounds the KV view up to a multiple of this
SPLIT_MIN = 512   # ggml's flash attention splits a lone row's KV view of at least this many cells


@dataclass(eq=False)
class Work:
    """One slot's rows for this step: ``tokens`` at positions ``pos``.. of sequence ``seq``."""

    key: object                 # the caller's handle (a slot), handed back with the row to sample
    seq: int
    pos: int
    tokens: list[int]
    prompt: bool                # prompt tokens (else one generated token)
    sample: bool                # sample from the last token's logits after the call
    outputs: int = 1            # with ``sample``: the last rows to sample from (a draft's rows: draft.py)


@dataclass(eq=False)
class Call:
    rows: list[tuple[int, int, int, bool]] = field(default_factory=list)  # (token, position, sequence, logits)
    outputs: list[tuple[object, int]] = field(default_factory=list)     # (key, row index) to sample after it
    trim: list[tuple[int, int]] = field(default_factory=list)           # (sequence, position): drop from there

    def add(self, w: Work, tokens: list[int], pos: int, last: bool) -> None:
        for i, tok in enumerate(tokens):
            want = last and w.sample and i >= len(tokens) - w.outputs
            if want:
                self.outputs.append((w.key, len(self.rows)))
            self.rows.append((tok, pos + i, w.seq, want))

    def pad(self, seq: int, pos: int, n: int, token: int) -> None:
        """``n`` throwaway rows at positions ``pos``.. (after every real row of the sequence: causal attention
        keeps them out of the real rows' numbers)."""
        self.rows.extend((token, pos + i, seq, False) for i in range(n))
        self.trim.append((seq, pos))


def calls(work: list[Work], deterministic: bool, n_ubatch: int) -> list[Call]:
    """The calls for one step, to run in order (sample each call's outputs before the next call)."""
    work = sorted(work, key=lambda w: w.seq)
    if not deterministic:
        one = Call()
        for w in work:
            one.add(w, w.tokens, w.pos, True)
        return [one] if one.rows else []
    out: list[Call] = []
    short = Call()
    for w in work:
        if w.prompt:
            continue
        if kv_view(w.pos) >= SPLIT_MIN:  # KV-SPLIT, which needs the row alone in its pass
            own = Call()
            own.add(w, w.tokens, w.pos, True)
            out.append(own)
        else:
            short.add(w, w.tokens, w.pos, True)
    if short.rows:
        out.insert(0, short)
    for w in work:
        if not w.prompt:
            continue
        pieces = _cut(len(w.tokens), n_ubatch)
        start = 0
        for i, n in enumerate(pieces):
            call = Call()
            call.add(w, w.tokens[start:start + n], w.pos + start, i == len(pieces) - 1)
            if n < TILE:
                call.pad(w.seq, w.pos + start + n, TILE - n, w.tokens[-1])
            out.append(call)
            start += n
    return out


def recomputed(n_prompt: int, deterministic: bool) -> int:
    """How many of a prompt's last tokens are computed even when a cache holds them: the last token's logits
    are needed, and in deterministic mode a whole TILE piece (so no short piece needs re-reading or padding)."""
    return min(n_prompt, TILE if deterministic else 1)


def kv_view(pos: int) -> int:
    """The KV view of a pass that writes position ``pos`` of a sequence holding positions 0..pos."""
    return -(-(pos + 1) // KV_PAD) * KV_PAD


def prompt_take(todo: int, cached: int, limit: int, deterministic: bool) -> tuple[int, int]:
    """How a slot with ``todo`` prompt tokens left (``cached`` already in its KV, all prompt rows) prefills this
    step within ``limit`` rows: (cached tokens to re-read, new tokens to take). (0, 0): wait for a later step."""
    if not deterministic:
        return 0, min(todo, limit)
    if limit < TILE:
        return 0, 0
    take = min(todo, limit)
    if 0 < todo - take < TILE and todo - TILE >= TILE:
        take = todo - TILE  # leave a whole piece for the next step rather than a short one
    reread = min(cached, TILE - take) if take < TILE else 0
    return reread, take


def _cut(n: int, ub: int) -> list[int]:
    """Piece sizes for ``n`` prompt rows: at most ``ub`` each, and none below TILE unless ``n`` is."""
    out = [ub] * (n // ub) + ([n % ub] if n % ub else [])
    if len(out) > 1 and out[-1] < TILE and out[-2] - (TILE - out[-1]) >= TILE:
        out[-2] -= TILE - out[-1]
        out[-1] = TILE
    return out
