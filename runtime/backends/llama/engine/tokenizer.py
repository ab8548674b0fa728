"""A loaded model's tokens, safe from any thread: text -> token ids, each token's bytes, the control and
end-of-generation tokens, and the vocabulary as a grammar matcher sees it."""

from __future__ import annotations

import ctypes

import llama_cpp as C
import numpy as np


class Tokenizer:
    """The vocabulary functions of a loaded model (``model``: a llama_model pointer). ``Engine`` is one."""

    def __init__(self, model):
        self._vocab = C.llama_model_get_vocab(model)
        self.n_vocab = C.llama_vocab_n_tokens(self._vocab)
        self._pieces: dict[int, bytes] = {}
        self._eog = np.array([C.llama_vocab_is_eog(self._vocab, t) for t in range(self.n_vocab)], dtype=bool)
        self._eog_ids = np.flatnonzero(self._eog).astype(np.int32)

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

    def vocabulary(self) -> tuple[list[bytes], list[int]]:
        """Every token's bytes (a control token's text behind a 0xFF byte, which no text contains, as llguidance
        expects) and the end-of-generation tokens: what a grammar matcher needs (any thread)."""
        control = C.LLAMA_TOKEN_ATTR_CONTROL
        pieces = [b"\xff" + self.token_text(t).encode() if C.llama_vocab_get_attr(self._vocab, t) & control
                  else self.piece(t) for t in range(self.n_vocab)]
        return pieces, self._eog_ids.tolist()
