"""Raw ceilings, measured in-process straight on llama.cpp's C API (no runtime code, no HTTP).

One sequence decoding alone, N sequences decoding together in one batch, and prefill time for a prompt.
Same model, same threads, flash attention on, llama.cpp's default ubatch: what llama-server itself would run.
"""

from __future__ import annotations

import ctypes
import os
import statistics
import time

import llama_cpp as C


@C.llama_log_callback
def _quiet(level, text, user):  # module-level: llama.cpp keeps this pointer for the life of the process
    return None


class Raw:
    def __init__(self, path, threads: int, n_seq: int = 8, n_ctx_seq: int = 1024):
        C.llama_log_set(_quiet, ctypes.c_void_p(0))
        C.llama_backend_init()
        self.model = C.llama_model_load_from_file(os.fsencode(path), C.llama_model_default_params())
        p = C.llama_context_default_params()
        p.n_ctx = n_ctx_seq * n_seq
        p.n_batch = 512
        p.n_seq_max = n_seq
        p.n_threads = p.n_threads_batch = threads
        p.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self.ctx = C.llama_init_from_model(self.model, p)
        self.vocab = C.llama_model_get_vocab(self.model)
        self.mem = C.llama_get_memory(self.ctx)
        self.batch = C.llama_batch_init(512, 0, 1)
        self.n_vocab = C.llama_vocab_n_tokens(self.vocab)

    def eog_tokens(self) -> list[int]:
        return [t for t in range(self.n_vocab) if C.llama_vocab_is_eog(self.vocab, t)]

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        buf = (C.llama_token * (len(data) + 16))()
        n = C.llama_tokenize(self.vocab, data, len(data), buf, len(buf), False, True)
        return list(buf[:n])

    def _decode(self, items) -> None:
        b = self.batch
        for i, (tok, pos, seq, want) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0], b.logits[i] = tok, pos, 1, seq, want
        b.n_tokens = len(items)
        if C.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def _argmax_not_eog(self, i: int, banned: set[int]) -> int:
        import numpy as np
        logits = np.ctypeslib.as_array(C.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,)).copy()
        logits[list(banned)] = -np.inf
        return int(logits.argmax())

    def prefill_ms(self, prompt: list[int], runs: int = 10) -> float:
        """p50 time to prefill ``prompt`` and pick the first token."""
        times = []
        for _ in range(runs):
            C.llama_memory_clear(self.mem, True)
            t0 = time.perf_counter()
            for k in range(0, len(prompt), 512):
                part = prompt[k:k + 512]
                self._decode([(t, k + i, 0, k + i == len(prompt) - 1) for i, t in enumerate(part)])
            self._argmax_not_eog(len(prompt) - 1 - (len(prompt) - 1) // 512 * 512, set())
            times.append((time.perf_counter() - t0) * 1000)
        return statistics.median(times)

    def decode_tps(self, prompt: list[int], n_seq: int, tokens: int) -> float:
        """Aggregate generated tokens/s for ``n_seq`` sequences decoding ``tokens`` each, one batch per step."""
        C.llama_memory_clear(self.mem, True)
        banned = set(self.eog_tokens())
        items = [(t, i, s, i == len(prompt) - 1) for s in range(n_seq) for i, t in enumerate(prompt)]
        assert len(items) <= 512, "bench prompt too long for one prefill batch"
        self._decode(items)
        last = [self._argmax_not_eog(len(prompt) * (s + 1) - 1, banned) for s in range(n_seq)]
        pos = len(prompt)
        t0 = time.perf_counter()
        for _ in range(tokens):
            self._decode([(last[s], pos, s, True) for s in range(n_seq)])
            last = [self._argmax_not_eog(s, banned) for s in range(n_seq)]
            pos += 1
        return n_seq * tokens / (time.perf_counter() - t0)

    def close(self) -> None:
        C.llama_batch_free(self.batch)
        C.llama_free(self.ctx)
        C.llama_model_free(self.model)
