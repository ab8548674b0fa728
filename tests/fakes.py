"""A fake engine at the engine seam: byte-level "tokens", instant decode, deterministic output.

It lets fast tests (the fuzzer) run the real HTTP layer, service, scheduler and ledger without llama.cpp.
Every feature also has end-to-end tests against the real model.
"""

from __future__ import annotations

from runtime.templates import CHATML

EOS = 256


class FakeSampler:
    def __init__(self, engine, params, seed):
        self.engine, self.n = engine, seed % 7
        self.eos_banned = any(tok == EOS for tok, _ in params.logit_bias)

    def sample(self, index: int) -> int:
        self.n += 1
        if self.n % 40 == 0 and not self.eos_banned:
            return EOS  # an end token now and then, unless banned
        return 97 + self.n % 26

    def close(self):
        pass


class FakeConfig:
    n_batch = 512


class FakeEngine:
    n_vocab = 300
    n_ubatch = 32
    config = FakeConfig()
    bos_text = eos_text = ""

    delay = 0.0  # seconds per decode call, to make generations take time

    def __init__(self, path=None, config=None):
        pass

    def tokenize(self, text: str, *, special: bool) -> list[int]:
        return list(text.encode("utf-8"))

    def piece(self, token: int) -> bytes:
        return bytes([token]) if token < 256 else b""

    def is_eog(self, token: int) -> bool:
        return token == EOS

    def bos(self) -> int:
        return 0

    def add_bos(self) -> bool:
        return False

    def chat_template(self) -> str:
        return CHATML

    def control_texts(self) -> list[str]:
        return ["<|im_end|>", "<|im_start|>"]

    def decode(self, items) -> None:
        if self.delay:
            import time
            time.sleep(self.delay)

    def sampler(self, params, seed):
        return FakeSampler(self, params, seed)

    def seq_remove(self, seq, p0=-1, p1=-1) -> bool:
        return True

    def seq_copy_prefix(self, src, dst, n) -> None:
        pass

    def close(self) -> None:
        pass
