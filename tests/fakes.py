"""Fakes at the two seams, for fast tests. Every feature also has end-to-end tests against the real model.

``FakeEngine`` stands in for llama.cpp under the real batcher (byte-level "tokens", instant decode, deterministic
output; it records every decode call so the batch-shape rules can be checked). ``FakeBackend`` implements the
backend protocol directly, for tests of the service's own rules.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from reverb.backends import Counts, Info, Stats
from reverb.backends.llama.backend import LlamaBackend
from reverb.models.templates import CHATML
from reverb.types import Chunk, FinishReason, Usage

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


@dataclass(frozen=True)
class FakeConfig:
    n_batch: int = 2048
    n_ubatch: int = 512
    deterministic: bool = False


class FakeEngine:
    """Records every decode call and keeps a model of each sequence's KV cells ({position: token}), so tests can
    check that the batcher's idea of a slot's cache (``Slot.cached``) is what the engine holds."""

    n_vocab = 300
    bos_text = eos_text = ""

    delay = 0.0  # seconds per decode call, to make generations take time

    def __init__(self, path=None, config=None):
        self.config = config or FakeConfig()
        self.n_ubatch = min(self.config.n_batch, self.config.n_ubatch)
        self.calls: list[list[tuple[int, int, int, bool]]] = []   # every decode call's rows
        self.removed: list[tuple[int, int, int]] = []
        self.copied: list[tuple[int, int, int]] = []
        self.kv: dict[int, dict[int, int]] = {}                    # seq -> {position: token}
        self.loaded: list[int] = []                                # sequences restored from saved state

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
        items = list(items)
        assert len(items) <= self.config.n_batch
        assert [r[2] for r in items] == sorted(r[2] for r in items), "rows must be in sequence order"
        self.calls.append(items)
        for tok, pos, seq, _ in items:
            cells = self.kv.setdefault(seq, {})
            assert pos not in cells, f"position {pos} of sequence {seq} is already in the cache"
            assert pos == 0 or pos - 1 in cells, f"a hole before position {pos} of sequence {seq}"
            cells[pos] = tok
        if self.delay:
            import time
            time.sleep(self.delay)

    def tokens(self, seq: int) -> list[int]:
        """The tokens sequence ``seq`` holds, in position order."""
        cells = self.kv.get(seq, {})
        return [cells[p] for p in sorted(cells)]

    def sampler(self, params, seed, grammar=None):
        return FakeSampler(self, params, seed)

    def vocabulary(self) -> tuple[list[bytes], list[int]]:
        return [self.piece(t) if t != EOS else b"\xff<eos>" for t in range(self.n_vocab)], [EOS]

    def logprob(self, index, token, top):
        from reverb.types import TokenLogprob
        return TokenLogprob(chr(token) if token < 256 else "", self.piece(token), -1.0,
                            tuple((chr(97 + i), bytes([97 + i]), -1.0 - i) for i in range(top)))

    embed_chunk = 4  # tokens per embeddings chunk, as the real engine reads long inputs in pieces

    def embed(self, tokens, stop=None, progress=None):
        import numpy as np
        for start in range(0, len(tokens), self.embed_chunk):
            if stop is not None and stop():
                return None
            if self.delay:
                import time
                time.sleep(self.delay)
            if progress is not None:
                progress(len(tokens[start:start + self.embed_chunk]))
        v = np.bincount(np.array(tokens) % 8, minlength=8).astype(float) + 1.0
        return v / np.linalg.norm(v)

    def seq_remove(self, seq, p0=-1, p1=-1) -> bool:
        self.removed.append((seq, p0, p1))
        lo, hi = (0 if p0 < 0 else p0), (1 << 62 if p1 < 0 else p1)
        self.kv[seq] = {p: t for p, t in self.kv.get(seq, {}).items() if not lo <= p < hi}
        return True

    def seq_copy_prefix(self, src, dst, n) -> None:
        self.copied.append((src, dst, n))
        self.kv[dst] = {p: t for p, t in self.kv.get(src, {}).items() if p < n}

    def seq_save(self, seq) -> bytearray:
        return bytearray(json.dumps(self.kv.get(seq, {})).encode())

    def seq_load(self, seq, data) -> None:
        self.loaded.append(seq)
        self.kv[seq] = {int(p): t for p, t in json.loads(bytes(data)).items()}

    def set_threads(self, n_threads: int, n_threads_batch: int) -> None:
        self.threads = (n_threads, n_threads_batch)

    def close(self) -> None:
        pass


def fake_llama(spec, settings, engine_cls=FakeEngine) -> LlamaBackend:
    """The real llama backend (batcher, owner thread, templates) over a fake engine."""
    return LlamaBackend.load(spec, None, settings, engine_factory=engine_cls)


@dataclass(frozen=True)
class FakePrompt:
    """FakeBackend's prepared value (``backends.Prepared``): only its counts."""

    counts: Counts


class FakeBackend:
    """The backend protocol with no model: each word of the last message comes back as one chunk."""

    def __init__(self, name: str = "smollm2-135m", ctx: int = 64, fail_with: Exception | None = None):
        self.info = Info(name=name, provider="fake", ctx=ctx, created=0)
        self.fail_with = fail_with
        self.cancelled = 0

    async def prepare(self, ask) -> FakePrompt:
        words = " ".join(m.content for m in ask.messages).split()
        return FakePrompt(Counts(n_tokens=len(words)))

    async def compile(self, prepared, ask) -> FakePrompt:
        return prepared

    def submit(self, prepared, params, on_chunk, tenant="", capped=True):
        n_prompt = prepared.counts.n_tokens
        loop = asyncio.get_running_loop()
        backend = self

        class Handle:
            stopped = False

            def cancel(self):
                self.stopped = True
                backend.cancelled += 1

        handle = Handle()

        async def run():
            sent = 0
            for word in ["w%d " % i for i in range(params.max_tokens)]:
                await asyncio.sleep(0)
                if handle.stopped:
                    on_chunk(Chunk(finish_reason=FinishReason.CANCELLED, usage=Usage(n_prompt, sent)))
                    return
                on_chunk(Chunk(text=word))
                sent += 1
            if self.fail_with is not None:
                on_chunk(Chunk(finish_reason=FinishReason.ERROR, usage=Usage(n_prompt, sent),
                               error=self.fail_with))
            else:
                on_chunk(Chunk(finish_reason=FinishReason.LENGTH, usage=Usage(n_prompt, sent)))

        handle.task = loop.create_task(run())  # keep a reference: the loop holds tasks weakly
        return handle

    def stats(self) -> Stats:
        return Stats(waiting=0, active=0, slots=1)

    def close(self) -> None:
        pass
