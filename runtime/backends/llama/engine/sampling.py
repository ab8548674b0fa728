"""Choosing each sequence's next token: a llama.cpp sampler chain per sequence, with its grammar matcher, over the
logits of the last decode (owner thread only)."""

from __future__ import annotations

import ctypes

import llama_cpp as C
import numpy as np

from ....types import SamplingParams

_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")], align=True)


class Candidates:
    """A row of the last decode's logits as a llama_token_data_array, for grammar sampling: every token, or the
    ``top`` best and the end tokens. One set of arrays per engine, shared by every sampler (they all run on the
    owner thread)."""

    def __init__(self, engine):
        self._engine = engine
        self.data = np.zeros(engine.n_vocab, dtype=_TOKEN_DATA)
        self._ids = np.arange(engine.n_vocab, dtype=np.int32)

    def at(self, batch_index: int, top: int | None):
        """The logits at ``batch_index`` as a llama_token_data_array (all, or the ``top`` best and the end tokens)."""
        e = self._engine
        logits = e.logits(batch_index, copy=False)
        cand = self.data
        if top is None or top >= e.n_vocab:  # a vocabulary smaller than the tier: all of it
            cand["id"], cand["logit"], cand["p"], n = self._ids, logits, 0.0, e.n_vocab
        else:
            pick = np.union1d(np.argpartition(logits, -top)[-top:], e._eog_ids)
            n = len(pick)
            cand["id"][:n], cand["logit"][:n], cand["p"][:n] = pick, logits[pick], 0.0
        return C.llama_token_data_array(cand.ctypes.data_as(C.llama_token_data_p), n, -1, False)


class Sampler:
    """One sequence's sampler chain (penalties -> top-k -> top-p -> min-p -> temperature -> seeded draw), and
    optionally a grammar matcher (guidance.Matcher, whose work is bounded). Like llama-server (grammar_first=false):
    draw without the grammar, check that one token, and only if it is rejected draw again from the best candidates by
    logit that the grammar allows, in widening tiers. A greedy pick equals grammar-first's (logit_bias and penalties
    apply after the cut); a sampled one comes from that tier. ``engine``: the Engine whose logits it reads."""

    RESAMPLE_TOP = (16, 256, 4096)  # widening tiers, then the whole vocabulary

    def __init__(self, engine, params: SamplingParams, seed: int, grammar=None):
        chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        add = lambda s: C.llama_sampler_chain_add(chain, s)  # noqa: E731
        if params.logit_bias:
            arr = (C.llama_logit_bias * len(params.logit_bias))(*[
                C.llama_logit_bias(tok, bias if bias > -100 else -float("inf")) for tok, bias in params.logit_bias])
            add(C.llama_sampler_init_logit_bias(engine.n_vocab, len(params.logit_bias), arr))
        if params.presence_penalty or params.frequency_penalty:
            add(C.llama_sampler_init_penalties(engine.n_vocab, -1, 1.0, params.frequency_penalty,
                                               params.presence_penalty))
        if params.temperature <= 0:
            add(C.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                add(C.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                add(C.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0.0:
                add(C.llama_sampler_init_min_p(params.min_p, 1))
            add(C.llama_sampler_init_temp(params.temperature))
            add(C.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        self._chain, self._engine, self._ctx = chain, engine, engine._ctx
        self._grammar = grammar.matcher() if grammar is not None else None
        # Only the penalties sampler keeps state from accepted tokens (dist draws in apply, not accept).
        self._stateless = not (params.presence_penalty or params.frequency_penalty)

    def sample(self, batch_index: int) -> int:
        """Sample (and accept) the next token from the logits at ``batch_index`` of the last decode; -1 when the
        grammar allows no token (the answer is complete but its end token is banned). Raises GrammarTooCostly when
        the grammar has used up its bounds (the caller ends this sequence alone)."""
        g = self._grammar
        if g is None:
            return C.llama_sampler_sample(self._chain, self._ctx, batch_index)
        if self._stateless:  # accepting a token the grammar then rejects changes nothing in such a chain
            tok = C.llama_sampler_sample(self._chain, self._ctx, batch_index)
        else:  # penalties remember accepted tokens: pick without accepting, accept once the grammar agrees
            tok = self._pick(self._engine.candidates.at(batch_index, None))
        for _ in range(8):  # an exact mask's pick is allowed; a lazy grammar's is checked token by token
            if tok >= 0 and g.allows(tok):
                break
            tok = self._resample(batch_index)
            if tok < 0:
                return -1
            if g.exact:
                break
        else:
            return -1
        g.accept(tok, self._engine.piece(tok))
        if not self._stateless:
            C.llama_sampler_accept(self._chain, tok)
        return tok

    def follow(self, tok: int) -> bool:
        """Accept a token chosen elsewhere if the grammar allows it (False, and nothing accepted, if not)."""
        if self._grammar is not None:
            if not self._grammar.allows(tok):
                return False
            self._grammar.accept(tok, self._engine.piece(tok))
        C.llama_sampler_accept(self._chain, tok)
        return True

    def _pick(self, arr) -> int:
        C.llama_sampler_apply(self._chain, ctypes.byref(arr))
        if not 0 <= arr.selected < arr.size or arr.data[arr.selected].logit == -np.inf:
            return -1  # nothing the grammar allows survives the chain (e.g. the end token is banned)
        return arr.data[arr.selected].id

    def _resample(self, batch_index: int) -> int:
        cands = self._engine.candidates
        allowed = self._grammar.mask()  # one bounded step over the whole vocabulary (~0.05 ms)
        if not allowed.any():
            return -1
        for top in (*self.RESAMPLE_TOP, None):  # the top candidates (and the end tokens), then everything
            arr = cands.at(batch_index, top)
            view = cands.data[:arr.size]
            keep = allowed[view["id"]]
            if keep.any():
                view["logit"][~keep] = -np.inf
                return self._pick(arr)
        return -1

    def close(self) -> None:
        if self._chain is not None:
            C.llama_sampler_free(self._chain)
        self._chain = self._grammar = None
