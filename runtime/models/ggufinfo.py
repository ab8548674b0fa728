"""What a GGUF file says about itself (``reverb show``, an ad-hoc model's context, the memory a load takes), from the
header that the bounded pre-check (``ggufcheck``) walks anyway: model files are untrusted input, and the ``gguf``
package's reader builds an array per vocabulary string (seconds per server start for a 49k vocabulary)."""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UnsafeModelFile
from . import ggufcheck, refs


@dataclass(frozen=True)
class GgufInfo:
    path: Path
    parts: int
    file_bytes: int               # every part together
    architecture: str
    name: str
    parameters: int               # elements of every tensor
    quant: str                    # general.file_type as llama.cpp names it (e.g. Q4_K_M), else the tensors' main type
    context_length: int           # what the model was trained for (0: not stated)
    layers: int
    kv_width: int                 # per layer and token: (head_count_kv * key_length + head_count_kv * value_length)
    chat_template: str | None
    license: str

    def kv_bytes(self, n_ctx: int) -> int:
        """A KV cache of ``n_ctx`` tokens at f16 (llama.cpp's default cache type)."""
        return self.layers * n_ctx * self.kv_width * 2


def read(path: Path) -> GgufInfo:
    """Read the metadata of ``path`` (the first part of a multi-part file reads every part's tensors).
    Raises UnsafeModelFile for a file that is not a well-formed GGUF. Remembered per file, size and mtime: a load
    asks twice."""
    try:
        st = os.stat(path)
    except OSError:
        raise UnsafeModelFile("model file not found") from None
    return _read(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _read(name: str, size: int, mtime: int) -> GgufInfo:
    from gguf.constants import GGMLQuantizationType

    path = Path(name)
    parts = [Path(p) for p in refs.split_parts(str(path))]
    headers = [ggufcheck.header(part, part=i > 0) for i, part in enumerate(parts)]
    fields = {k: v for k, v in headers[0].kv.items() if not k.startswith("tokenizer.ggml.")}
    parameters, types = 0, []
    for h in headers:
        for _, dims, ttype, _ in h.tensors:
            parameters += math.prod(dims)
            types.append(GGMLQuantizationType(ttype).name)   # ggufcheck refused unknown types
    arch = str(fields.get("general.architecture", ""))

    def num(key: str) -> int:
        value = fields.get(f"{arch}.{key}")
        if isinstance(value, list):   # per-layer values (some architectures): the largest
            value = max(value) if value else 0
        return int(value) if isinstance(value, (int, float)) else 0

    heads = num("attention.head_count") or 1
    kv_heads = num("attention.head_count_kv") or heads
    head_dim = num("embedding_length") // heads if num("embedding_length") else 0
    width = kv_heads * ((num("attention.key_length") or head_dim) + (num("attention.value_length") or head_dim))
    return GgufInfo(
        path=path, parts=len(parts), file_bytes=sum(p.stat().st_size for p in parts), architecture=arch,
        name=str(fields.get("general.name", "")), parameters=parameters,
        quant=_file_type(fields.get("general.file_type"), types), context_length=num("context_length"),
        layers=num("block_count"), kv_width=width, chat_template=_str(fields.get("tokenizer.chat_template")),
        license=str(fields.get("general.license", "")),
    )


def _str(value) -> str | None:
    return value if isinstance(value, str) else None


def _file_type(value, types: list[str]) -> str:
    import gguf   # its enums only

    if isinstance(value, int):
        try:
            return gguf.LlamaFileType(value).name.removeprefix("MOSTLY_")
        except ValueError:
            pass
    if not types:
        return ""
    return max(set(types), key=types.count)


def human_count(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
