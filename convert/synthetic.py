"""Synthetic ``Qwen2ForCausalLM`` checkpoints: random weights at a chosen size, written tensor by tensor.

For tests (a tiny model with a numpy reference forward pass, tests/qwen2_tiny.py) and for the benchmark's
memory-bound row (a ~1B model: on a CPU one decode step of it is mostly reading its weights, as with a 7B model on a
laptop). Weights are drawn from a normal distribution whose scale shrinks as 1/sqrt(hidden), so activations keep
their size as the model grows; the greedy output is not language. The vocabulary is byte-level (the 256 bytes, a
few merges unless ``merges=()``, ChatML's special tokens) with a ChatML chat template.

One tensor is drawn, converted and written at a time (``safetensors_io.write_stream``), so a 1B checkpoint never
holds more than its largest tensor in memory.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import safetensors_io
from .tokenizer import QWEN2_REGEX


@dataclass(frozen=True)
class Shape:
    hidden: int = 256
    ffn: int = 512
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    ctx: int = 1024

    def check(self) -> None:
        if min(self.hidden, self.ffn, self.layers, self.heads, self.kv_heads, self.ctx) <= 0:
            raise ValueError("every size must be positive")
        if self.hidden % self.heads or self.heads % self.kv_heads or (self.hidden // self.heads) % 2:
            raise ValueError("hidden must divide into heads of an even size, and heads into kv_heads groups")


# "1b": TinyLlama-1.1B's shape with Qwen2's biased q/k/v (0.97B parameters with the byte vocabulary)
PRESETS = {"tiny": Shape(), "1b": Shape(hidden=2048, ffn=5632, layers=22, heads=32, kv_heads=4, ctx=4096)}
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
MERGES = (("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("e", "r"))
# ASCII text as one token per byte, so a text tokenizes back to the tokens that made it: one merge (the two UTF-8
# bytes of "ä"), because llama.cpp does not load a BPE vocabulary without merges
BYTE_MERGES = (("Ã", "¤"),)
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
DTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def vocab(merges=MERGES) -> dict[str, int]:
    """Byte tokens (token id = byte value), then one token per merge."""
    table = bytes_to_unicode()
    out = {table[b]: b for b in range(256)}
    for a, b in merges:
        out[a + b] = len(out)
    return out


def tensor_specs(shape: Shape, n_vocab: int) -> list[tuple[str, tuple[int, ...], float, float]]:
    """(name, shape, offset, scale) in the order they are drawn: each is ``offset + scale * N(0, 1)``."""
    h, f, nh, nkv = shape.hidden, shape.ffn, shape.heads, shape.kv_heads
    hd = h // nh
    s = 0.08 * (256 / h) ** 0.5          # 0.08 at the tiny model's 256
    out = [("model.embed_tokens.weight", (n_vocab, h), 0.0, 1.0), ("model.norm.weight", (h,), 1.0, 0.1),
           ("lm_head.weight", (n_vocab, h), 0.0, 0.3 * (256 / h) ** 0.5)]
    layer = [("input_layernorm.weight", (h,), 1.0, 0.1), ("post_attention_layernorm.weight", (h,), 1.0, 0.1),
             ("self_attn.q_proj.weight", (nh * hd, h), 0.0, s), ("self_attn.q_proj.bias", (nh * hd,), 0.0, 0.02),
             ("self_attn.k_proj.weight", (nkv * hd, h), 0.0, s), ("self_attn.k_proj.bias", (nkv * hd,), 0.0, 0.02),
             ("self_attn.v_proj.weight", (nkv * hd, h), 0.0, s), ("self_attn.v_proj.bias", (nkv * hd,), 0.0, 0.02),
             ("self_attn.o_proj.weight", (h, nh * hd), 0.0, s), ("mlp.gate_proj.weight", (f, h), 0.0, s),
             ("mlp.up_proj.weight", (f, h), 0.0, s), ("mlp.down_proj.weight", (h, f), 0.0, s)]
    for i in range(shape.layers):
        out += [(f"model.layers.{i}.{name}", dims, offset, scale) for name, dims, offset, scale in layer]
    return out


def parameters(shape: Shape, merges=MERGES, added: tuple[str, ...] = ()) -> int:
    n_vocab = len(vocab(merges)) + len(SPECIAL) + len(added)
    return sum(int(np.prod(dims)) for _, dims, _, _ in tensor_specs(shape, n_vocab))


def config(shape: Shape, n_vocab: int) -> dict:
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": n_vocab,
            "tie_word_embeddings": False, "hidden_size": shape.hidden, "intermediate_size": shape.ffn,
            "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
            "num_key_value_heads": shape.kv_heads, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
            "max_position_embeddings": shape.ctx}


def write(dir_: Path, shape: Shape = PRESETS["tiny"], seed: int = 0, dtype: str = "f32", *, shards: int = 2,
          merges=MERGES, template: str = TEMPLATE, added: tuple[str, ...] = ()) -> dict:
    """Write the checkpoint into ``dir_`` (config.json, ``shards`` safetensors files, tokenizer files); ``added`` are
    tokens after the special ones that are not special (as Qwen3's ``<think>``: user-defined tokens in the GGUF).
    Returns a summary: parameters, bytes, the shape. The same arguments always write the same weights."""
    shape.check()
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}")
    rng = np.random.default_rng(seed)
    words = vocab(merges)
    n_vocab = len(words) + len(SPECIAL) + len(added)
    specs = tensor_specs(shape, n_vocab)
    dir_ = Path(dir_)
    dir_.mkdir(parents=True, exist_ok=True)
    shards = max(1, min(shards, len(specs)))
    cuts = [len(specs) * k // shards for k in range(shards + 1)]   # shards of equal tensor counts

    def draw(dims, offset, scale):
        # float64 draws, then float32: the tiny model's weights stay what they always were
        arr = (rng.standard_normal(dims) * scale).astype(np.float32)
        return arr + np.float32(offset) if offset else arr

    total = 0
    for k in range(shards):
        part = specs[cuts[k]:cuts[k + 1]]
        name = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        total += safetensors_io.write_stream(dir_ / name, [(n, DTYPES[dtype], dims) for n, dims, _, _ in part],
                                             (draw(dims, o, s) for _, dims, o, s in part))
    (dir_ / "config.json").write_text(json.dumps(config(shape, n_vocab)))
    extra = [{"id": len(words) + i, "content": t, "special": i < len(SPECIAL)}
             for i, t in enumerate([*SPECIAL, *added])]
    (dir_ / "tokenizer.json").write_text(json.dumps({
        "added_tokens": extra,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "model": {"type": "BPE", "vocab": words, "merges": [f"{a} {b}" for a, b in merges]}}))
    (dir_ / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                                                            "bos_token": None, "chat_template": template}))
    return {"parameters": sum(int(np.prod(d)) for _, d, _, _ in specs), "bytes": total, "shape": asdict(shape),
            "vocab": n_vocab, "seed": seed, "dtype": dtype}
