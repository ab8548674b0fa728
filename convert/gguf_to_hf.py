"""GGUF (llama architecture) -> a Hugging Face-style directory: config.json, model.safetensors (F32),
tokenizer.json and tokenizer_config.json with the chat template. It exists for round trips: export the bundled
model, convert it back with ``reverb convert``, and check nothing was lost."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np

from . import safetensors_io, tokenizer
from .hf_to_gguf import ConvertError, unpermute

HF_LAYER_TENSORS = ["input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                    "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
PRE_TOKENIZERS = {
    "smollm": tokenizer.SMOLLM_PRE,
    "qwen2": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": tokenizer.QWEN2_REGEX}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
}


def export(src: Path, out_dir: Path) -> dict:
    """Write ``out_dir``. Raises ConvertError for files this exporter cannot represent."""
    r = gguf.GGUFReader(src)

    def field(key: str, default=None):
        f = r.fields.get(key)
        return f.contents() if f is not None else default

    arch = field("general.architecture")
    if arch != "llama":
        raise ConvertError(f"export supports the llama architecture (got {arch})")
    n_layer, n_head = field("llama.block_count"), field("llama.attention.head_count")
    n_head_kv = field("llama.attention.head_count_kv", n_head)
    n_embd = field("llama.embedding_length")
    tokens, types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")
    pre = field("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise ConvertError(f"no tokenizer.json form for pre-tokenizer {pre!r}")

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
    hf_names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"] + [
        f"model.layers.{i}.{t}.weight" for i in range(n_layer) for t in HF_LAYER_TENSORS]
    to_hf = {name_map.get_name(n, try_suffixes=(".weight",)): n for n in hf_names}
    tensors: dict[str, np.ndarray] = {}
    for t in r.tensors:
        hf = to_hf.get(t.name)
        if hf is None:
            raise ConvertError(f"GGUF tensor {t.name} has no Hugging Face name")
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        if hf.endswith("q_proj.weight"):
            data = unpermute(data, n_head)
        elif hf.endswith("k_proj.weight"):
            data = unpermute(data, n_head_kv)
        tensors[hf] = np.ascontiguousarray(data)

    out_dir.mkdir(parents=True, exist_ok=True)
    safetensors_io.write(out_dir / "model.safetensors", tensors)
    ids = {k: field(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding", "unknown")}
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": n_embd,
        "intermediate_size": field("llama.feed_forward_length"), "num_hidden_layers": n_layer,
        "num_attention_heads": n_head, "num_key_value_heads": n_head_kv,
        "rms_norm_eps": field("llama.attention.layer_norm_rms_epsilon"),
        "rope_theta": field("llama.rope.freq_base", 10000.0), "max_position_embeddings": field("llama.context_length"),
        "vocab_size": len(tokens), "head_dim": field("llama.rope.dimension_count", n_embd // n_head),
        "tie_word_embeddings": "lm_head.weight" not in tensors, "torch_dtype": "float32",
        "bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "_name_or_path": field("general.name", src.stem),
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    special = {int(gguf.TokenType.CONTROL), int(gguf.TokenType.USER_DEFINED)}
    added = [{"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": types[i] == gguf.TokenType.CONTROL} for i, tok in enumerate(tokens) if types[i] in special]
    tok_json = {
        "version": "1.0", "added_tokens": added, "normalizer": None, "pre_tokenizer": PRE_TOKENIZERS[pre],
        "post_processor": None, "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                                            "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "fuse_unk": False, "byte_fallback": False,
                  "vocab": {tok: i for i, tok in enumerate(tokens) if types[i] not in special},
                  "merges": list(field("tokenizer.ggml.merges", []))},
    }
    (out_dir / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False))
    text = {k: (tokens[v] if v is not None else None) for k, v in ids.items()}
    cfg = {"bos_token": text["bos"], "eos_token": text["eos"], "pad_token": text["padding"],
           "unk_token": text["unknown"], "add_bos_token": bool(field("tokenizer.ggml.add_bos_token", False)),
           "chat_template": field("tokenizer.chat_template")}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
    return {"tensors": len(tensors), "dir": str(out_dir)}
