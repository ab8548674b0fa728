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

    def sample(self, index: int) -> int:
        self.n += 1
        return EOS if self.n % 40 == 0 else 97 + self.n % 26  # letters, then an end token now and then

    def close(self):
        pass


class FakeConfig:
    n_batch = 512


class FakeEngine:
    n_vocab = 300
    n_ubatch = 32
    config = FakeConfig()
    bos_text = eos_text = ""

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
        pass

    def sampler(self, params, seed):
        return FakeSampler(self, params, seed)

    def seq_remove(self, seq, p0=-1, p1=-1) -> bool:
        return True

    def seq_copy_prefix(self, src, dst, n) -> None:
        pass

    def close(self) -> None:
        pass
