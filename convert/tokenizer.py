"""tokenizer.json / tokenizer_config.json <-> GGUF tokenizer fields, for byte-level BPE (gpt2-style) vocabularies.

llama.cpp needs the pre-tokenizer by name; it is recognised from tokenizer.json's pre_tokenizer (table below) or
given with ``--pre``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf

QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
SMOLLM_PRE = {"type": "Sequence", "pretokenizers": [
    {"type": "Digits", "individual_digits": True},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}


class TokenizerError(ValueError):
    pass


@dataclass
class Vocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    bos: int | None
    eos: int | None
    pad: int | None
    unk: int | None
    add_bos: bool
    chat_template: str | None


def detect_pre(pre_tokenizer: dict | None) -> str | None:
    """llama.cpp's name for a tokenizer.json pre_tokenizer, or None when it is not one we know."""
    if not pre_tokenizer:
        return None
    regexes = set(_split_patterns(pre_tokenizer))
    if QWEN2_REGEX in regexes:
        return "qwen2"
    if LLAMA3_REGEX in regexes:
        return "llama-bpe"
    parts = pre_tokenizer.get("pretokenizers", [pre_tokenizer])
    kinds = [(p.get("type"), p.get("individual_digits"), p.get("use_regex")) for p in parts]
    if kinds == [("Digits", True, None), ("ByteLevel", None, True)]:
        return "smollm"
    return None


def _split_patterns(node):
    if isinstance(node, dict):
        if node.get("type") == "Split":
            pattern = node.get("pattern") or {}
            yield pattern.get("Regex") or pattern.get("String")
        for value in node.values():
            yield from _split_patterns(value)
    elif isinstance(node, list):
        for value in node:
            yield from _split_patterns(value)


def read(hf_dir: Path, pre: str | None = None) -> Vocab:
    """Raises TokenizerError for what this converter cannot represent."""
    try:
        tok = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TokenizerError("tokenizer.json not found") from None
    cfg_path = hf_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
    model = tok.get("model", {})
    if model.get("type") != "BPE":
        raise TokenizerError(f"only BPE tokenizers are supported (got {model.get('type')})")
    vocab: dict[str, int] = dict(model["vocab"])
    added = {a["content"]: a for a in tok.get("added_tokens", [])}
    for content, a in added.items():
        vocab[content] = a["id"]
    n = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [gguf.TokenType.UNUSED] * n
    for text, i in vocab.items():
        tokens[i] = text
        a = added.get(text)
        types[i] = (gguf.TokenType.NORMAL if a is None else
                    gguf.TokenType.CONTROL if a.get("special") else gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    name = pre or detect_pre(tok.get("pre_tokenizer"))
    if name is None:
        raise TokenizerError("unknown pre-tokenizer in tokenizer.json; name llama.cpp's with --pre "
                             "(e.g. qwen2, llama-bpe, smollm, gpt2)")

    def tid(key: str) -> int | None:
        value = cfg.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        return vocab.get(value) if isinstance(value, str) else None

    return Vocab(tokens=tokens, types=[int(t) for t in types], merges=merges, pre=name,
                 bos=tid("bos_token"), eos=tid("eos_token"), pad=tid("pad_token"), unk=tid("unk_token"),
                 add_bos=bool(cfg.get("add_bos_token", False)), chat_template=cfg.get("chat_template"))


def write_gguf_fields(w: gguf.GGUFWriter, v: Vocab) -> None:
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(v.pre)
    w.add_token_list(v.tokens)
    w.add_token_types(v.types)
    w.add_token_merges(v.merges)
    for value, add in ((v.bos, w.add_bos_token_id), (v.eos, w.add_eos_token_id), (v.pad, w.add_pad_token_id),
                       (v.unk, w.add_unk_token_id)):
        if value is not None:
            add(value)
    w.add_add_bos_token(v.add_bos)
    if v.chat_template:
        w.add_chat_template(v.chat_template)
