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

Deterministic mode fixes each row's path by its position alone (and whether it is a prompt row):

- Prompt rows before ``tiled_from`` (position 256, or the whole context when it is too short for a TILED piece
  after that) run ONE-ROW: each piece is a call of its own of at most ``TILE - 1`` rows of one sequence, as even
  as the cut allows. A short request costs its own rows and nothing more, and from a cache only its last row.
- Prompt rows from ``tiled_from`` on run TILED, where long prompts are cheapest: each piece is a call of its own of
  ``TILE``..n_ubatch rows of one sequence (a short last piece re-reads cached prompt rows from ``tiled_from`` on,
  which come out the same on this path, and is topped up with throwaway rows after its end where there are too
  few; they are dropped from the KV cache right after the call).
- A generated row before position 256 runs ONE-ROW, in one call with the other such rows; from position 256 on it
  runs KV-SPLIT, in a call of its own. (The other way, ONE-ROW from 256 on with a throwaway partner row for a
  stream alone in its pass, costs a third more per token to a lone long conversation; this way costs several long
  conversations decoding at once a pass each.) So generated rows are not reused as a later prompt's rows.
- A lone ONE-ROW prompt row whose KV view reaches ``SPLIT_MIN`` (a short context's last rows) gets one throwaway
  partner row, as KV-SPLIT would take it alone.

Measured in process on the tiny model (2 threads, 2026-12-06): a 20-token prompt costs 85 ms on ONE-ROW against
240 ms as a padded TILED piece; a 1,300-token prompt 6.7 s on ONE-ROW throughout against 5.2 s on TILED, hence
the switch at 256.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TILE = 64         # GGML_FA_TILE_Q: flash attention's tiled path from this many rows per sequence in a pass
TILED_FROM = 256  # deterministic mode: prompt rows from this position on run TILED, before it ONE-ROW
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


def calls(work: list[Work], deterministic: bool, n_ubatch: int, tiled_from: int = TILED_FROM) -> list[Call]:
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
        tiled = w.pos >= tiled_from   # prompt_take never lets a piece cross tiled_from
        pieces = _cut(len(w.tokens), n_ubatch) if tiled else _even(len(w.tokens), min(n_ubatch, TILE - 1))
        start = 0
        for i, n in enumerate(pieces):
            call = Call()
            at = w.pos + start
            call.add(w, w.tokens[start:start + n], at, i == len(pieces) - 1)
            if tiled and n < TILE:
                call.pad(w.seq, at + n, TILE - n, w.tokens[-1])
            elif n == 1 and kv_view(at) >= SPLIT_MIN:   # a lone ONE-ROW row there would take KV-SPLIT
                call.pad(w.seq, at + 1, 1, w.tokens[-1])
            out.append(call)
            start += n
    return out


def tiled_from(n_ctx: int) -> int:
    """Deterministic mode: the first prompt position that runs TILED (none when the context cannot hold a TILED
    piece after position 256: its throwaway rows need the cells)."""
    return TILED_FROM if n_ctx >= TILED_FROM + TILE else n_ctx


def recomputed(n_prompt: int) -> int:
    """How many of a prompt's last tokens are computed even when a cache holds them: the last, for its logits (a
    TILED last piece re-reads more, see prompt_take)."""
    return min(n_prompt, 1)


def kv_view(pos: int) -> int:
    """The KV view of a pass that writes position ``pos`` of a sequence holding positions 0..pos."""
    return -(-(pos + 1) // KV_PAD) * KV_PAD


def prompt_take(todo: int, cached: int, limit: int, deterministic: bool, tiled_from: int) -> tuple[int, int]:
    """How a slot with ``todo`` prompt tokens left (``cached`` already in its KV, all prompt rows) prefills this
    step within ``limit`` rows: (cached tokens to re-read, new tokens to take). (0, 0): wait for a later step."""
    if not deterministic:
        return 0, min(todo, limit)
    if cached < tiled_from:   # ONE-ROW rows, up to tiled_from
        return 0, max(0, min(todo, limit, tiled_from - cached))
    if limit < TILE:
        return 0, 0
    take = min(todo, limit)
    if 0 < todo - take < TILE and todo - TILE >= TILE:
        take = todo - TILE  # leave a whole piece for the next step rather than a short one
    reread = min(cached - tiled_from, TILE - take) if take < TILE else 0
    return reread, take


def _cut(n: int, ub: int) -> list[int]:
    """TILED piece sizes for ``n`` prompt rows: at most ``ub`` each, and none below TILE unless ``n`` is."""
    out = [ub] * (n // ub) + ([n % ub] if n % ub else [])
    if len(out) > 1 and out[-1] < TILE and out[-2] - (TILE - out[-1]) >= TILE:
        out[-2] -= TILE - out[-1]
        out[-1] = TILE
    return out


def _even(n: int, most: int) -> list[int]:
    """ONE-ROW piece sizes for ``n`` prompt rows: at most ``most`` each, as even as they can be."""
    k = -(-n // most)
    return [n // k + (i < n % k) for i in range(k)]
