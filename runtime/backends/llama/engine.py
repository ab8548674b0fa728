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
from ...types import SamplingParams, TokenLogprob
from .logprobs import token_logprob
from .shapes import SPLIT_MIN, kv_view

log = logging.getLogger("reverb.engine")

_backend_lock = threading.Lock()
_backend_ready = False
_LEVELS = {2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}  # ggml_log_level: 2 INFO, 3 WARN, 4 ERROR


@C.llama_log_callback
def _log_callback(level, text, _user):  # llama.cpp is chatty at INFO: that is DEBUG here (quantize's progress)
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
    """One sequence's sampler chain (penalties -> top-k -> top-p -> min-p -> temperature -> seeded draw), and
    optionally a grammar matcher (guidance.Matcher, whose work is bounded). Like llama-server (grammar_first=false):
    draw without the grammar, check that one token, and only if it is rejected draw again from the best candidates by
    logit that the grammar allows, in widening tiers. A greedy pick equals grammar-first's (logit_bias and penalties
    apply after the cut); a sampled one comes from that tier."""

    RESAMPLE_TOP = (16, 256, 4096)  # widening tiers, then the whole vocabulary

    def __init__(self, engine: "Engine", params: SamplingParams, seed: int, grammar=None):
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
            tok = self._pick(self._engine._candidates(batch_index, None))
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
        e = self._engine
        allowed = self._grammar.mask()  # one bounded step over the whole vocabulary (~0.05 ms)
        if not allowed.any():
            return -1
        for top in (*self.RESAMPLE_TOP, None):  # the top candidates (and the end tokens), then everything
            arr = e._candidates(batch_index, top)
            view = e._cand[:arr.size]
            keep = allowed[view["id"]]
            if keep.any():
                view["logit"][~keep] = -np.inf
                return self._pick(arr)
        return -1

    def close(self) -> None:
        if self._chain is not None:
            C.llama_sampler_free(self._chain)
        self._chain = self._grammar = None


_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")], align=True)


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
        cparams.n_batch, cparams.n_ubatch = config.n_batch, min(config.n_batch, config.n_ubatch)
        cparams.n_seq_max = config.n_seq
        cparams.n_threads, cparams.n_threads_batch = config.n_threads, config.n_threads_batch
        cparams.flash_attn_type = (C.LLAMA_FLASH_ATTN_TYPE_ENABLED if config.flash_attn
                                   else C.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        cparams.kv_unified = False  # one KV stream per sequence: attention reads only its own cells
        cparams.no_perf = True
        if config.all_logits:
            cparams.n_outputs_max, cparams.n_outputs_max_per_seq = config.n_batch, 0
        else:  # one output per sequence per call: the compute buffer need not hold n_ubatch rows of logits
            cparams.n_outputs_max = config.n_seq
        self._ctx = C.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            C.llama_model_free(self._model)
            raise ModelLoadError("llama.cpp could not create a context (out of memory?)")
        self._mem = C.llama_get_memory(self._ctx)
        self.config = config
        self.n_ctx, self.n_ubatch = C.llama_n_ctx_seq(self._ctx), C.llama_n_ubatch(self._ctx)
        self._threads = self._applied = self._fixed = (config.n_threads, config.n_threads_batch)
        self._batch = C.llama_batch_init(config.n_batch, 0, 1)
        self._pieces: dict[int, bytes] = {}
        self._eog = np.array([C.llama_vocab_is_eog(self._vocab, t) for t in range(self.n_vocab)], dtype=bool)
        # Candidate arrays for grammar sampling, shared by every sampler (they all run on the owner thread).
        self._cand = np.zeros(self.n_vocab, dtype=_TOKEN_DATA)
        self._ids = np.arange(self.n_vocab, dtype=np.int32)
        self._eog_ids = np.flatnonzero(self._eog).astype(np.int32)
        self._embedder: _Embedder | None = None

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

    def vocabulary(self) -> tuple[list[bytes], list[int]]:
        """Every token's bytes (a control token's text behind a 0xFF byte, which no text contains, as llguidance
        expects) and the end-of-generation tokens: what a grammar matcher needs (any thread)."""
        control = C.LLAMA_TOKEN_ATTR_CONTROL
        pieces = [b"\xff" + self.token_text(t).encode() if C.llama_vocab_get_attr(self._vocab, t) & control
                  else self.piece(t) for t in range(self.n_vocab)]
        return pieces, self._eog_ids.tolist()

    def _candidates(self, batch_index: int, top: int | None):
        """The logits at ``batch_index`` as a llama_token_data_array (all, or the ``top`` best and the end tokens)."""
        logits = self.logits(batch_index, copy=False)
        cand = self._cand
        if top is None or top >= self.n_vocab:  # a vocabulary smaller than the tier: all of it
            cand["id"], cand["logit"], cand["p"], n = self._ids, logits, 0.0, self.n_vocab
        else:
            pick = np.union1d(np.argpartition(logits, -top)[-top:], self._eog_ids)
            n = len(pick)
            cand["id"][:n], cand["logit"][:n], cand["p"][:n] = pick, logits[pick], 0.0
        return C.llama_token_data_array(cand.ctypes.data_as(C.llama_token_data_p), n, -1, False)

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
            self._embedder = _Embedder(self)
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


class _Embedder:
    """An embeddings context. A GGUF naming its own pooling is pooled by llama.cpp (the whole input in one ubatch).
    A generative model's is the mean of its last hidden states over chunks of CHUNK tokens (causal: the KV cache
    carries the context), as llama.cpp also writes logits for each pooled token: 2048 at once took ~800 MB more."""

    CHUNK = 256

    def __init__(self, engine: Engine):
        cfg, buf = engine.config, ctypes.create_string_buffer(64)
        C.llama_model_meta_val_str(engine._model, b"general.architecture", buf, 64)
        self.pooled = C.llama_model_meta_val_str(engine._model, buf.value + b".pooling_type", buf, 64) > 0
        cparams = C.llama_context_default_params()
        cparams.n_ctx = cfg.n_ctx
        cparams.n_batch = cparams.n_ubatch = cfg.n_ctx if self.pooled else min(self.CHUNK, cfg.n_ctx)
        cparams.n_threads = cparams.n_threads_batch = cfg.n_threads_batch
        cparams.pooling_type = C.LLAMA_POOLING_TYPE_UNSPECIFIED if self.pooled else C.LLAMA_POOLING_TYPE_NONE
        cparams.n_seq_max, cparams.embeddings, cparams.no_perf = 1, True, True
        self._ctx = C.llama_init_from_model(engine._model, cparams)
        if not self._ctx:
            raise EngineError("llama.cpp could not create an embeddings context (out of memory?)")
        self._mem = C.llama_get_memory(self._ctx)
        self._n_embd = C.llama_model_n_embd(engine._model)
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
def _u8(data: bytearray):
    return (ctypes.c_uint8 * len(data)).from_buffer(data)


QUANT_TYPES = {"Q4_0": C.LLAMA_FTYPE_MOSTLY_Q4_0, "Q8_0": C.LLAMA_FTYPE_MOSTLY_Q8_0,
               "Q4_K_M": C.LLAMA_FTYPE_MOSTLY_Q4_K_M, "Q5_K_M": C.LLAMA_FTYPE_MOSTLY_Q5_K_M,
               "Q6_K": C.LLAMA_FTYPE_MOSTLY_Q6_K, "F16": C.LLAMA_FTYPE_MOSTLY_F16, "F32": C.LLAMA_FTYPE_ALL_F32}


def quantize(src: Path, dst: Path, qtype: str, threads: int = 0) -> None:
    """Quantize a GGUF with llama.cpp's quantizer. Raises ModelLoadError when llama.cpp refuses."""
    _init_backend()
    params = C.llama_model_quantize_default_params()
    params.ftype, params.nthread = QUANT_TYPES[qtype], threads
    params.allow_requantize = True  # an already-quantized input is allowed (e.g. the bundled Q4_1 -> F32)
    rc = C.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(params))
    if rc != 0:
        raise ModelLoadError(f"llama.cpp could not quantize the model ({rc})")
