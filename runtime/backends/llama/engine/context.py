"""A loaded GGUF and its decoding context: one llama.cpp context with a KV stream per sequence, batched decode,
the logits of the last decode, and the KV operations on sequences (remove, copy a prefix, save, load).
Everything here but the tokenizer's functions runs on the model's owner thread."""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as C
import numpy as np

from ....errors import EngineError, ModelLoadError
from ....types import SamplingParams, TokenLogprob
from ..logprobs import token_logprob
from ..shapes import SPLIT_MIN, kv_view
from .embeddings import EmbeddingContext
from .library import init_backend
from .sampling import Candidates, Sampler
from .tokenizer import Tokenizer


@dataclass(frozen=True)
class EngineConfig:
    n_ctx: int           # KV cells per sequence (each sequence has its own KV stream, as llama-server's slots do)
    n_seq: int           # sequences that may be live at once
    n_threads: int
    n_threads_batch: int
    n_batch: int = 2048  # rows per llama_decode call (llama-server's default)
    n_ubatch: int = 512  # rows per compute pass inside a call (llama-server's default)
    flash_attn: bool = True
    # Batch-invariant numerics (the batcher's shape rules, see shapes.py): repacked weight layouts multiply a
    # batch's rows in groups of four and the rest one by one, so a row's result would depend on the batch size;
    # deterministic mode loads the plain layout.
    deterministic: bool = False
    all_logits: bool = False  # logits for every row of a call (eval), not just one per sequence
    outputs_per_seq: int = 1  # logits rows one sequence may ask for in one call (a draft's rows: draft.py)


class Engine(Tokenizer):
    """A loaded GGUF model with one llama.cpp context. Raises ModelLoadError when it cannot load."""

    def __init__(self, path: Path, config: EngineConfig):
        init_backend()
        if not Path(path).is_file():
            raise ModelLoadError("model file not found")
        mparams = C.llama_model_default_params()
        mparams.use_extra_bufts = not config.deterministic  # see EngineConfig.deterministic
        self._model = C.llama_model_load_from_file(os.fsencode(path), mparams)
        if not self._model:
            raise ModelLoadError("llama.cpp could not load the model file")
        super().__init__(self._model)
        cparams = C.llama_context_default_params()
        cparams.n_ctx = config.n_ctx * config.n_seq
        cparams.n_batch, cparams.n_ubatch = config.n_batch, min(config.n_batch, config.n_ubatch)
        cparams.n_seq_max = config.n_seq
        cparams.n_threads, cparams.n_threads_batch = config.n_threads, config.n_threads_batch
        cparams.flash_attn_type = (C.LLAMA_FLASH_ATTN_TYPE_ENABLED if config.flash_attn
                                   else C.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        cparams.kv_unified = False  # one KV stream per sequence: attention reads only its own cells
        cparams.no_perf = True
        if config.all_logits:
            cparams.n_outputs_max, cparams.n_outputs_max_per_seq = config.n_batch, 0
        else:  # a few outputs per sequence per call: the compute buffer need not hold n_ubatch rows of logits
            cparams.n_outputs_max = config.n_seq * config.outputs_per_seq
            cparams.n_outputs_max_per_seq = config.outputs_per_seq
        self._ctx = C.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            C.llama_model_free(self._model)
            raise ModelLoadError("llama.cpp could not create a context (out of memory?)")
        self._mem = C.llama_get_memory(self._ctx)
        self.config = config
        self.n_ctx, self.n_ubatch = C.llama_n_ctx_seq(self._ctx), C.llama_n_ubatch(self._ctx)
        self._threads = self._applied = self._fixed = (config.n_threads, config.n_threads_batch)
        self._batch = C.llama_batch_init(config.n_batch, 0, 1)
        self.candidates = Candidates(self)
        self._embedder: EmbeddingContext | None = None

    def chat_template(self) -> str | None:
        raw = C.llama_model_chat_template(self._model, None)
        return raw.decode("utf-8", "replace") if raw else None

    # -- context: owner thread only ----------------------------------------------------------------------

    def decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        """Run one ``llama_decode`` over (token, position, sequence, want_logits) items. llama.cpp cuts the call
        into compute passes of at most n_ubatch rows, each holding equal numbers of rows from a run of consecutive
        sequence ids, so callers list rows in sequence order (see shapes.py). Logits of this call are valid until
        the next one. Raises EngineError when llama.cpp fails (including when the KV cache has no room)."""
        b = self._batch
        n = len(items)
        if n > self.config.n_batch:
            raise EngineError("batch larger than n_batch")
        for i, (tok, pos, seq, want) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0], b.logits[i] = tok, pos, 1, seq, want
        b.n_tokens = n
        threads = self._fixed if self.config.deterministic and n == 1 and kv_view(pos) >= SPLIT_MIN else self._threads
        if threads != self._applied:
            C.llama_set_n_threads(self._ctx, *threads)
            self._applied = threads
        rc = C.llama_decode(self._ctx, b)
        if rc != 0:
            raise EngineError(f"llama_decode failed ({rc})")

    def set_threads(self, n_threads: int, n_threads_batch: int) -> None:
        """Threads from the next call on (one row: n_threads; more: the batch count). In deterministic mode a lone row
        on flash attention's KV-split path keeps the configured counts: that path splits the KV by thread count."""
        self._threads = (n_threads, n_threads_batch)

    def sampler(self, params: SamplingParams, seed: int, grammar=None) -> Sampler:
        return Sampler(self, params, seed, grammar)

    def logprob(self, batch_index: int, token: int, top: int) -> TokenLogprob:
        """``token``'s log probability at ``batch_index`` of the last decode, with the ``top`` alternatives."""
        return token_logprob(self.logits(batch_index, copy=False), token, top, self.piece)

    def logits(self, batch_index: int, copy: bool = True) -> np.ndarray:
        """The logits at ``batch_index`` of the last decode: a copy, or a view valid until the next decode."""
        ptr = C.llama_get_logits_ith(self._ctx, batch_index)
        if not ptr:
            raise EngineError("no logits for that batch index")
        view = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        return view.copy() if copy else view

    def seq_remove(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        """Drop positions [p0, p1) of a sequence from the KV cache (all of it by default)."""
        return bool(C.llama_memory_seq_rm(self._mem, seq, p0, p1))

    def seq_copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Make ``dst`` hold the first ``n`` positions of ``src`` (a stream copy: llama.cpp copies whole
        streams between sequences, then the tail is dropped)."""
        C.llama_memory_seq_cp(self._mem, src, dst, -1, -1)
        C.llama_memory_seq_rm(self._mem, dst, n, -1)

    def embed(self, tokens: list[int], stop=None, progress=None) -> np.ndarray | None:
        """A unit-length embedding (the GGUF's pooling, else the mean of the last hidden states) in a second context
        (same weights, own thread). None once ``stop()``, asked per chunk, says so; ``progress(n)`` per chunk."""
        if self._embedder is None:
            self._embedder = EmbeddingContext(self._model, self.config)
        return self._embedder.embed(tokens, stop or (lambda: False), progress or (lambda n: None))

    def seq_save(self, seq: int) -> bytearray:
        """A sequence's KV cells (positions and tensors) as host bytes, for ``seq_load`` later."""
        size = C.llama_state_seq_get_size_ext(self._ctx, seq, 0)
        data = bytearray(size)
        if size and C.llama_state_seq_get_data_ext(self._ctx, _u8(data), size, seq, 0) != size:
            raise EngineError("could not save a sequence's state")
        return data

    def seq_load(self, seq: int, data: bytearray) -> None:
        """Replace sequence ``seq``'s cells with ``data`` from ``seq_save``. Raises EngineError (the sequence is
        then empty)."""
        if C.llama_state_seq_set_data_ext(self._ctx, _u8(data), len(data), seq, 0) != len(data):
            C.llama_memory_seq_rm(self._mem, seq, -1, -1)
            raise EngineError("could not restore a sequence's state")

    def close(self) -> None:
        if self._embedder is not None:
            self._embedder.close()
            self._embedder = None
        if getattr(self, "_ctx", None):
            C.llama_batch_free(self._batch)
            C.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            C.llama_model_free(self._model)
            self._model = None


def _u8(data: bytearray):
    return (ctypes.c_uint8 * len(data)).from_buffer(data)
