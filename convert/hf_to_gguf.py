"""Hugging Face ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` checkpoints -> GGUF, with the gguf package and numpy.

Architectures are data (``ARCHS``): the GGUF architecture, whether q/k rows are permuted (llama.cpp's llama
graph expects the original interleaved RoPE layout; HF stores rotate-half), and which config.json keys feed which
hyperparameters. Tensor names map through gguf's own ``TensorNameMap``. The output is written to a temp file and
renamed, so a failed conversion never leaves a half file under the real name.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from . import safetensors_io, tokenizer


class ConvertError(ValueError):
    pass


@dataclass(frozen=True)
class Arch:
    gguf_arch: gguf.MODEL_ARCH
    permute_qk: bool


ARCHS = {
    "LlamaForCausalLM": Arch(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "Qwen2ForCausalLM": Arch(gguf.MODEL_ARCH.QWEN2, permute_qk=False),
}
OUTTYPES = {
    "f32": (gguf.LlamaFileType.ALL_F32, None),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "bf16": (gguf.LlamaFileType.MOSTLY_BF16, gguf.GGMLQuantizationType.BF16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
}


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half q/k rows -> llama.cpp's interleaved order."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of ``permute``."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def convert(hf_dir: Path, out: Path, outtype: str = "f16", pre: str | None = None) -> dict:
    """Convert a checkpoint directory. Returns a summary. Raises ConvertError (or its tokenizer/safetensors kin)."""
    hf_dir = Path(hf_dir)
    try:
        cfg = json.loads((hf_dir / "config.json").read_text())
    except FileNotFoundError:
        raise ConvertError(f"{hf_dir}: config.json not found") from None
    archs = cfg.get("architectures") or []
    arch = ARCHS.get(archs[0] if archs else "")
    if arch is None:
        raise ConvertError(f"architecture {archs} is not supported (supported: {', '.join(ARCHS)})")
    if outtype not in OUTTYPES:
        raise ConvertError(f"outtype must be one of {', '.join(OUTTYPES)}")
    n_layer = _need(cfg, "num_hidden_layers")
    n_head = _need(cfg, "num_attention_heads")
    n_head_kv = cfg.get("num_key_value_heads", n_head)
    n_embd = _need(cfg, "hidden_size")
    vocab = tokenizer.read(hf_dir, pre)
    tensors = safetensors_io.read_dir(hf_dir)
    name_map = gguf.get_tensor_name_map(arch.gguf_arch, n_layer)
    ftype, qtype = OUTTYPES[outtype]

    tmp = out.with_name(out.name + ".tmp")
    w = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch.gguf_arch])
    w.add_name(cfg.get("_name_or_path") or hf_dir.name)
    w.add_context_length(cfg.get("max_position_embeddings", 4096))
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(_need(cfg, "intermediate_size"))
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    w.add_rope_dimension_count(cfg.get("head_dim", n_embd // n_head))
    w.add_vocab_size(len(vocab.tokens))
    w.add_file_type(ftype)
    tokenizer.write_gguf_fields(w, vocab)

    # Two passes, so only one tensor is converted and held at a time: every tensor's name, shape and size (from
    # the memory-mapped shapes alone) into the header, then each one read, encoded and written in that order.
    plan = []
    for name, arr in tensors.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        new = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ConvertError(f"tensor {name} has no GGUF name for {archs[0]}")
        raw_dtype, nbytes = _encoded_size(arr.shape, qtype)
        w.add_tensor_info(new, arr.shape, np.dtype(np.float32), nbytes, raw_dtype=raw_dtype)
        plan.append(name)
    if cfg.get("tie_word_embeddings") is False and "lm_head.weight" not in tensors:
        raise ConvertError("config says the output layer is not tied, but lm_head.weight is missing")
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for name in plan:
            data = np.asarray(tensors[name], dtype=np.float32)
            if arch.permute_qk and name.endswith("q_proj.weight"):
                data = permute(data, n_head)
            elif arch.permute_qk and name.endswith("k_proj.weight"):
                data = permute(data, n_head_kv)
            w.write_tensor_data(_encode(data, qtype)[0])
        w.close()
        os.replace(tmp, out)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    written = len(plan)
    return {"architecture": archs[0], "tensors": written, "outtype": outtype, "pre": vocab.pre,
            "bytes": out.stat().st_size}


def _encoded_size(shape: tuple[int, ...], qtype) -> tuple[gguf.GGMLQuantizationType, int]:
    """(GGUF type, bytes) of a tensor of ``shape`` as ``_encode`` writes it."""
    n = int(np.prod(shape))
    if qtype is None or len(shape) == 1:
        return gguf.GGMLQuantizationType.F32, 4 * n
    if qtype == gguf.GGMLQuantizationType.F16 or (qtype == gguf.GGMLQuantizationType.Q8_0 and shape[-1] % 32):
        return gguf.GGMLQuantizationType.F16, 2 * n
    return qtype, int(np.prod(gguf.quants.quant_shape_to_byte_shape(shape, qtype)))


def _encode(data: np.ndarray, qtype) -> tuple[np.ndarray, gguf.GGMLQuantizationType | None]:
    """(array to write, raw dtype). Norms and biases (1-D) stay F32, as llama.cpp's own converter does."""
    if qtype is None or data.ndim == 1:
        return data, None
    if qtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16), None
    if qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32:  # q8_0 blocks are 32 wide
        return data.astype(np.float16), None
    return gguf.quants.quantize(data, qtype), qtype


def _need(cfg: dict, key: str):
    if key not in cfg:
        raise ConvertError(f"config.json has no {key}")
    return cfg[key]
