"""A tiny, randomly initialised Qwen2ForCausalLM checkpoint (convert/synthetic.py), and a numpy forward pass.

The forward pass is an independent reference for what llama.cpp computes from the converted GGUF.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from convert import safetensors_io, synthetic

CFG = synthetic.config(synthetic.PRESETS["tiny"], n_vocab=0)   # the keys forward() reads
TEMPLATE = synthetic.TEMPLATE


def write(dir_: Path, seed: int = 0, template: str = TEMPLATE, added: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The checkpoint in ``dir_`` (convert/synthetic.py's tiny preset, float32, two shards), and its tensors as
    written; ``added`` are tokens after the special ones that are not special (as Qwen3's ``<think>``)."""
    synthetic.write(dir_, synthetic.PRESETS["tiny"], seed, "f32", shards=2, template=template, added=added)
    return {k: np.array(v) for k, v in safetensors_io.read_dir(Path(dir_)).items()}


def forward(t: dict[str, np.ndarray], tokens: list[int], cfg: dict = CFG) -> np.ndarray:
    """Qwen2 logits [n, vocab] in float64: RMSNorm, biased q/k/v, NEOX RoPE, GQA causal attention, SwiGLU; ``cfg``
    is the checkpoint's config.json (default: the tiny one's)."""
    h, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, eps, n = h // nh, cfg["rms_norm_eps"], len(tokens)
    g = {k: v.astype(np.float64) for k, v in t.items()}

    def norm(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    inv = 1.0 / cfg["rope_theta"] ** (np.arange(0, hd, 2) / hd)
    ang = np.outer(np.arange(n), inv)
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(x):  # x [heads, n, hd], rotate-half
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * cos + np.concatenate([-x2, x1], -1) * sin

    x = g["model.embed_tokens.weight"][tokens]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
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
