"""The only llama_cpp user: a thin object over llama.cpp's C API through llama-cpp-python's low-level bindings.

The high-level ``Llama`` class decodes one sequence at a time and formats chats itself; we need many sequences
in one ``llama_decode`` and our own template, so this module calls the C API directly. Everything except the
vocabulary functions (tokenize, piece, metadata) must be called from the model's owner thread.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as C
import numpy as np

from ...errors import EngineError, ModelLoadError
from ...types import SamplingParams

log = logging.getLogger("reverb.engine")

_backend_lock = threading.Lock()
_backend_ready = False
_LEVELS = {3: logging.WARNING, 4: logging.ERROR}  # ggml_log_level: 2 INFO, 3 WARN, 4 ERROR


@C.llama_log_callback
def _log_callback(level, text, _user):  # llama.cpp is chatty at INFO; keep only warnings and errors
    lvl = _LEVELS.get(level)
    if lvl is not None and text:
        log.log(lvl, "llama.cpp: %s", text.decode("utf-8", "replace").rstrip())


def _init_backend() -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            C.llama_log_set(_log_callback, ctypes.c_void_p(0))
            C.llama_backend_init()
            _backend_ready = True


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


class Sampler:
    """One sequence's sampler chain (penalties -> top-k -> top-p -> min-p -> temperature -> seeded draw)."""

    def __init__(self, engine: "Engine", params: SamplingParams, seed: int):
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
        self._chain = chain
        self._ctx = engine._ctx

    def sample(self, batch_index: int) -> int:
        """Sample (and accept) the next token from the logits at ``batch_index`` of the last decode."""
        return C.llama_sampler_sample(self._chain, self._ctx, batch_index)

    def close(self) -> None:
        if self._chain is not None:
            C.llama_sampler_free(self._chain)
            self._chain = None


class Engine:
    """A loaded GGUF model with one llama.cpp context. Raises ModelLoadError when it cannot load."""

    def __init__(self, path: Path, config: EngineConfig):
        _init_backend()
        if not Path(path).is_file():
            raise ModelLoadError("model file not found")
        mparams = C.llama_model_default_params()
        mparams.use_extra_bufts = not config.deterministic  # see EngineConfig.deterministic
        self._model = C.llama_model_load_from_file(os.fsencode(path), mparams)
        if not self._model:
            raise ModelLoadError("llama.cpp could not load the model file")
        self._vocab = C.llama_model_get_vocab(self._model)
        self.n_vocab = C.llama_vocab_n_tokens(self._vocab)
        cparams = C.llama_context_default_params()
        cparams.n_ctx = config.n_ctx * config.n_seq
        cparams.n_batch = config.n_batch
        cparams.n_ubatch = min(config.n_batch, config.n_ubatch)
        cparams.n_seq_max = config.n_seq
        cparams.n_threads = config.n_threads
        cparams.n_threads_batch = config.n_threads_batch
        cparams.flash_attn_type = (C.LLAMA_FLASH_ATTN_TYPE_ENABLED if config.flash_attn
                                   else C.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        cparams.kv_unified = False  # one KV stream per sequence: attention reads only its own cells
        cparams.no_perf = True
        if config.all_logits:
            cparams.n_outputs_max = config.n_batch
            cparams.n_outputs_max_per_seq = 0
        else:  # one output per sequence per call: the compute buffer need not hold n_ubatch rows of logits
            cparams.n_outputs_max = config.n_seq
        self._ctx = C.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            C.llama_model_free(self._model)
            raise ModelLoadError("llama.cpp could not create a context (out of memory?)")
        self._mem = C.llama_get_memory(self._ctx)
        self.config = config
        self.n_ctx = C.llama_n_ctx_seq(self._ctx)
        self.n_ubatch = C.llama_n_ubatch(self._ctx)
        self._batch = C.llama_batch_init(config.n_batch, 0, 1)
        self._pieces: dict[int, bytes] = {}
        self._eog = np.array([C.llama_vocab_is_eog(self._vocab, t) for t in range(self.n_vocab)], dtype=bool)

    # -- vocabulary: safe from any thread --------------------------------------------------------------

    def tokenize(self, text: str, *, special: bool) -> list[int]:
        """Token ids for ``text``. ``special=True`` parses control-token spellings (template text only)."""
        data = text.encode("utf-8")
        cap = len(data) + 16
        buf = (C.llama_token * cap)()
        n = C.llama_tokenize(self._vocab, data, len(data), buf, cap, False, special)
        if n < 0:  # buffer too small: -n is the size needed
            cap = -n
            buf = (C.llama_token * cap)()
            n = C.llama_tokenize(self._vocab, data, len(data), buf, cap, False, special)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for; control tokens give b''. May be part of a UTF-8 character."""
        got = self._pieces.get(token)
        if got is None:
            buf = ctypes.create_string_buffer(64)
            n = C.llama_token_to_piece(self._vocab, token, buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = C.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
            got = self._pieces[token] = buf.raw[:n]
        return got

    def is_eog(self, token: int) -> bool:
        return bool(self._eog[token])

    def control_texts(self) -> list[str]:
        """Spellings of control and user-defined tokens (e.g. ``<|im_end|>``), longest first."""
        if not hasattr(self, "_control_texts"):
            mask = C.LLAMA_TOKEN_ATTR_CONTROL | C.LLAMA_TOKEN_ATTR_USER_DEFINED
            texts = {self.token_text(t) for t in range(self.n_vocab) if C.llama_vocab_get_attr(self._vocab, t) & mask}
            self._control_texts = sorted((t for t in texts if t), key=len, reverse=True)
        return self._control_texts

    def token_text(self, token: int) -> str:
        if token < 0 or token >= self.n_vocab:
            return ""
        return (C.llama_vocab_get_text(self._vocab, token) or b"").decode("utf-8", "replace")

    @property
    def bos_text(self) -> str:
        return self.token_text(C.llama_vocab_bos(self._vocab))

    @property
    def eos_text(self) -> str:
        return self.token_text(C.llama_vocab_eos(self._vocab))

    def add_bos(self) -> bool:
        return bool(C.llama_vocab_get_add_bos(self._vocab))

    def bos(self) -> int:
        return C.llama_vocab_bos(self._vocab)

    def chat_template(self) -> str | None:
        raw = C.llama_model_chat_template(self._model, None)
        return raw.decode("utf-8", "replace") if raw else None

    # -- context: owner thread only ----------------------------------------------------------------------

    def decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        """Run one ``llama_decode`` over (token, position, sequence, want_logits) items.

        llama.cpp cuts the call into compute passes of at most n_ubatch rows, each holding equal numbers of rows
        from a run of consecutive sequence ids, so callers list rows in sequence order (see shapes.py). Logits of
        this call are valid until the next one. Raises EngineError when llama.cpp fails (including when the KV
        cache has no room).
        """
        b = self._batch
        n = len(items)
        if n > self.config.n_batch:
            raise EngineError("batch larger than n_batch")
        for i, (tok, pos, seq, want) in enumerate(items):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = want
        b.n_tokens = n
        rc = C.llama_decode(self._ctx, b)
        if rc != 0:
            raise EngineError(f"llama_decode failed ({rc})")

    def sampler(self, params: SamplingParams, seed: int) -> Sampler:
        return Sampler(self, params, seed)

    def logits(self, batch_index: int) -> np.ndarray:
        """A copy of the logits at ``batch_index`` of the last decode."""
        ptr = C.llama_get_logits_ith(self._ctx, batch_index)
        if not ptr:
            raise EngineError("no logits for that batch index")
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def seq_remove(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        """Drop positions [p0, p1) of a sequence from the KV cache (all of it by default)."""
        return bool(C.llama_memory_seq_rm(self._mem, seq, p0, p1))

    def seq_copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Make ``dst`` hold the first ``n`` positions of ``src`` (a stream copy: llama.cpp copies whole
        streams between sequences, then the tail is dropped)."""
        C.llama_memory_seq_cp(self._mem, src, dst, -1, -1)
        C.llama_memory_seq_rm(self._mem, dst, n, -1)

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
        if getattr(self, "_ctx", None):
            C.llama_batch_free(self._batch)
            C.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            C.llama_model_free(self._model)
            self._model = None


def _u8(data: bytearray):
    return (ctypes.c_uint8 * len(data)).from_buffer(data)


QUANT_TYPES = {
    "Q4_0": C.LLAMA_FTYPE_MOSTLY_Q4_0, "Q8_0": C.LLAMA_FTYPE_MOSTLY_Q8_0,
    "Q4_K_M": C.LLAMA_FTYPE_MOSTLY_Q4_K_M, "Q5_K_M": C.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "Q6_K": C.LLAMA_FTYPE_MOSTLY_Q6_K, "F16": C.LLAMA_FTYPE_MOSTLY_F16, "F32": C.LLAMA_FTYPE_ALL_F32,
}


def quantize(src: Path, dst: Path, qtype: str, threads: int = 0) -> None:
    """Quantize a GGUF with llama.cpp's quantizer. Raises ModelLoadError when llama.cpp refuses."""
    _init_backend()
    params = C.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[qtype]
    params.nthread = threads
    params.allow_requantize = True  # an already-quantized input is allowed (e.g. the bundled Q4_1 -> F32)
    rc = C.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(params))
    if rc != 0:
        raise ModelLoadError(f"llama.cpp could not quantize the model ({rc})")
