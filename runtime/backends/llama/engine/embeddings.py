"""The embeddings context: a second llama.cpp context over a loaded model's weights, on its own thread
(``Engine.embed``)."""

from __future__ import annotations

import ctypes

import llama_cpp as C
import numpy as np

from ....errors import EngineError


class EmbeddingContext:
    """An embeddings context. A GGUF naming its own pooling is pooled by llama.cpp (the whole input in one ubatch).
    A generative model's is the mean of its last hidden states over chunks of CHUNK tokens (causal: the KV cache
    carries the context), as llama.cpp also writes logits for each pooled token: 2048 at once took ~800 MB more."""

    CHUNK = 256

    def __init__(self, model, cfg):
        buf = ctypes.create_string_buffer(64)
        C.llama_model_meta_val_str(model, b"general.architecture", buf, 64)
        self.pooled = C.llama_model_meta_val_str(model, buf.value + b".pooling_type", buf, 64) > 0
        cparams = C.llama_context_default_params()
        cparams.n_ctx = cfg.n_ctx
        cparams.n_batch = cparams.n_ubatch = cfg.n_ctx if self.pooled else min(self.CHUNK, cfg.n_ctx)
        cparams.n_threads = cparams.n_threads_batch = cfg.n_threads_batch
        cparams.pooling_type = C.LLAMA_POOLING_TYPE_UNSPECIFIED if self.pooled else C.LLAMA_POOLING_TYPE_NONE
        cparams.n_seq_max, cparams.embeddings, cparams.no_perf = 1, True, True
        self._ctx = C.llama_init_from_model(model, cparams)
        if not self._ctx:
            raise EngineError("llama.cpp could not create an embeddings context (out of memory?)")
        self._mem = C.llama_get_memory(self._ctx)
        self._n_embd = C.llama_model_n_embd(model)
        self._step, self._batch = cparams.n_batch, C.llama_batch_init(cparams.n_batch, 0, 1)
        self.n_ctx = cfg.n_ctx

    def embed(self, tokens: list[int], stop, progress) -> np.ndarray | None:
        if not 0 < len(tokens) <= self.n_ctx:
            raise EngineError("input does not fit the embeddings context")
        C.llama_memory_clear(self._mem, True)
        total = np.zeros(self._n_embd)
        b = self._batch
        for start in range(0, len(tokens), self._step):
            if stop():
                return None
            part = tokens[start:start + self._step]
            for i, tok in enumerate(part):
                b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0], b.logits[i] = tok, start + i, 1, 0, True
            b.n_tokens = len(part)
            if C.llama_decode(self._ctx, b) != 0:
                raise EngineError("llama_decode failed for embeddings")
            ptr = C.llama_get_embeddings_seq(self._ctx, 0) if self.pooled else C.llama_get_embeddings(self._ctx)
            if not ptr:
                raise EngineError("no embeddings from llama.cpp")
            rows = 1 if self.pooled else len(part)
            total += np.ctypeslib.as_array(ptr, shape=(rows, self._n_embd)).sum(axis=0, dtype=np.float64)
            progress(len(part))
        vec = total if self.pooled else total / len(tokens)
        return vec / (np.linalg.norm(vec) or 1.0)

    def close(self) -> None:
        C.llama_batch_free(self._batch)
        C.llama_free(self._ctx)
