"""A tiny, randomly initialised Qwen2ForCausalLM checkpoint written with numpy, and a numpy forward pass.

The forward pass is an independent reference for what llama.cpp computes from the converted GGUF.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from convert import safetensors_io
from convert.tokenizer import QWEN2_REGEX

CFG = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=1024)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


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


def write(dir_: Path, seed: int = 0, template: str = TEMPLATE, added: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The checkpoint in ``dir_``; ``added`` are tokens after the special ones that are not special (as Qwen3's
    ``<think>`` and ``</think>``: user-defined tokens in the GGUF, written out as text)."""
    rng = np.random.default_rng(seed)
    byte_tokens = [bytes_to_unicode()[b] for b in range(256)]
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("e", "r")]
    vocab = {t: i for i, t in enumerate(byte_tokens)}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    n_vocab = len(vocab) + len(SPECIAL) + len(added)
    h, f, L = CFG["hidden_size"], CFG["intermediate_size"], CFG["num_hidden_layers"]
    nh, nkv = CFG["num_attention_heads"], CFG["num_key_value_heads"]
    hd = h // nh

    def w(*shape, scale=0.08):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    t = {"model.embed_tokens.weight": w(n_vocab, h, scale=1.0), "model.norm.weight": 1 + w(h, scale=0.1),
         "lm_head.weight": w(n_vocab, h, scale=0.3)}
    for i in range(L):
        p = f"model.layers.{i}."
        t |= {p + "input_layernorm.weight": 1 + w(h, scale=0.1),
              p + "post_attention_layernorm.weight": 1 + w(h, scale=0.1),
              p + "self_attn.q_proj.weight": w(nh * hd, h), p + "self_attn.q_proj.bias": w(nh * hd, scale=0.02),
              p + "self_attn.k_proj.weight": w(nkv * hd, h), p + "self_attn.k_proj.bias": w(nkv * hd, scale=0.02),
              p + "self_attn.v_proj.weight": w(nkv * hd, h), p + "self_attn.v_proj.bias": w(nkv * hd, scale=0.02),
              p + "self_attn.o_proj.weight": w(h, nh * hd), p + "mlp.gate_proj.weight": w(f, h),
              p + "mlp.up_proj.weight": w(f, h), p + "mlp.down_proj.weight": w(h, f)}
    dir_.mkdir(parents=True, exist_ok=True)
    half = len(t) // 2  # two shards, to cover sharded checkpoints
    names = list(t)
    safetensors_io.write(dir_ / "model-00001-of-00002.safetensors", {k: t[k] for k in names[:half]})
    safetensors_io.write(dir_ / "model-00002-of-00002.safetensors", {k: t[k] for k in names[half:]})
    (dir_ / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                                                  "vocab_size": n_vocab, "tie_word_embeddings": False, **CFG}))
    extra = [{"id": len(vocab) + i, "content": s, "special": i < len(SPECIAL)}
             for i, s in enumerate([*SPECIAL, *added])]
    (dir_ / "tokenizer.json").write_text(json.dumps({
        "added_tokens": extra,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "model": {"type": "BPE", "vocab": vocab, "merges": [f"{a} {b}" for a, b in merges]}}))
    (dir_ / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                                                            "bos_token": None, "chat_template": template}))
    return t


def forward(t: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    """Qwen2 logits [n, vocab] in float64: RMSNorm, biased q/k/v, NEOX RoPE, GQA causal attention, SwiGLU."""
    h, nh, nkv = CFG["hidden_size"], CFG["num_attention_heads"], CFG["num_key_value_heads"]
    hd, eps, n = h // nh, CFG["rms_norm_eps"], len(tokens)
    g = {k: v.astype(np.float64) for k, v in t.items()}

    def norm(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    inv = 1.0 / CFG["rope_theta"] ** (np.arange(0, hd, 2) / hd)
    ang = np.outer(np.arange(n), inv)
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(x):  # x [heads, n, hd], rotate-half
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * cos + np.concatenate([-x2, x1], -1) * sin

    x = g["model.embed_tokens.weight"][tokens]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(CFG["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = norm(x, g[p + "input_layernorm.weight"])
        q, k, v = (_proj(g, p, name, a, heads, hd) for name, heads in (("q", nh), ("k", nkv), ("v", nkv)))
        q, k = rope(q), rope(k)
        k, v = np.repeat(k, nh // nkv, 0), np.repeat(v, nh // nkv, 0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        o = (s / s.sum(-1, keepdims=True)) @ v
        x = x + o.transpose(1, 0, 2).reshape(n, h) @ g[p + "self_attn.o_proj.weight"].T
        m = norm(x, g[p + "post_attention_layernorm.weight"])
        gate = m @ g[p + "mlp.gate_proj.weight"].T
        x = x + ((gate / (1 + np.exp(-gate))) * (m @ g[p + "mlp.up_proj.weight"].T)) @ g[p + "mlp.down_proj.weight"].T
    return norm(x, g["model.norm.weight"]) @ g["lm_head.weight"].T


def _proj(g: dict, prefix: str, name: str, a: np.ndarray, heads: int, hd: int) -> np.ndarray:
    out = a @ g[prefix + f"self_attn.{name}_proj.weight"].T + g[prefix + f"self_attn.{name}_proj.bias"]
    return out.reshape(len(a), heads, hd).transpose(1, 0, 2)
