"""``reverb eval``: how much quality a quantization cost, measured against a reference model on a shipped text.

Both models read the same tokens in windows of ``ctx``; the report gives each model's perplexity, the mean KL
divergence KL(reference || model) of their next-token distributions, and how often their top-1 tokens agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .engine import Engine, EngineConfig
from .threads import usable_cores


def window_logits(path: Path, tokens: list[int], ctx: int, threads: int = 0):
    """Yield (logits[n, vocab], targets[n]) per window: the prediction for each next token."""
    n = threads or usable_cores()
    eng = Engine(path, EngineConfig(n_ctx=ctx, n_seq=1, n_threads=n, n_threads_batch=n, n_batch=ctx, n_ubatch=512,
                                    all_logits=True))
    try:
        for start in range(0, len(tokens) - 1, ctx):
            window = tokens[start:start + ctx + 1]
            inp = window[:-1]
            eng.seq_remove(0)
            eng.decode([(t, i, 0, True) for i, t in enumerate(inp)])
            yield np.stack([eng.logits(i) for i in range(len(inp))]), np.array(window[1:])
    finally:
        eng.close()


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare(model: Path, ref: Path, text: str, ctx: int = 512, threads: int = 0) -> dict:
    """The quality report as a dict (perplexities, mean KL, top-1 agreement, tokens scored). ``threads``: llama.cpp
    threads per model (0: the cores this process may use)."""
    tok_engine = Engine(ref, EngineConfig(n_ctx=256, n_seq=1, n_threads=1, n_threads_batch=1))
    tokens = ([tok_engine.bos()] if tok_engine.add_bos() else []) + tok_engine.tokenize(text, special=False)
    tok_engine.close()
    nll_m = nll_r = kl = agree = 0.0
    n = 0
    for (lm, targets), (lr, _) in zip(window_logits(model, tokens, ctx, threads),
                                      window_logits(ref, tokens, ctx, threads), strict=True):
        pm, pr = _log_softmax(lm.astype(np.float64)), _log_softmax(lr.astype(np.float64))
        idx = np.arange(len(targets))
        nll_m -= pm[idx, targets].sum()
        nll_r -= pr[idx, targets].sum()
        kl += (np.exp(pr) * (pr - pm)).sum()
        agree += (lm.argmax(-1) == lr.argmax(-1)).sum()
        n += len(targets)
    return {"tokens": n, "ppl_model": float(np.exp(nll_m / n)), "ppl_ref": float(np.exp(nll_r / n)),
            "kl_mean": float(kl / n), "top1_agreement": float(agree / n)}

