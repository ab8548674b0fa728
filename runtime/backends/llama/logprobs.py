"""Log probabilities from a row of logits (numpy only): what ``logprobs`` / ``top_logprobs`` report."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ...types import TokenLogprob


def token_logprob(logits: np.ndarray, token: int, top: int, piece: Callable[[int], bytes]) -> TokenLogprob:
    """``token``'s log probability under the model's distribution (log-softmax of the raw logits, before any
    sampler: what the model believes, as OpenAI reports it), with the ``top`` most likely tokens, best first.
    Greedy decoding picks the first of them."""
    x = logits.astype(np.float64)
    m = x.max()
    lse = m + np.log(np.exp(x - m).sum())
    best = np.argpartition(-x, top)[:top] if 0 < top < len(x) else np.arange(min(top, len(x)))
    best = best[np.argsort(-x[best], kind="stable")]

    def entry(t: int) -> tuple[str, bytes, float]:
        raw = piece(int(t))
        return raw.decode("utf-8", "replace"), raw, float(x[t] - lse)

    text, raw, lp = entry(token)
    return TokenLogprob(text, raw, lp, tuple(entry(t) for t in best))
