"""What a GGUF file says about itself (``reverb show``, an ad-hoc model's context, the memory a load takes), read
with the ``gguf`` package's reader after the bounded pre-check (``ggufcheck``): model files are untrusted input."""

from __future__ import annotations

import functools
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
    Raises UnsafeModelFile for a file that is not a well-formed GGUF. Remembered per file, size and mtime: the
    reader builds an array per vocabulary string, seconds for a large vocabulary, and a load asks twice."""
    try:
        st = os.stat(path)
    except OSError:
        raise UnsafeModelFile("model file not found") from None
    return _read(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _read(name: str, size: int, mtime: int) -> GgufInfo:
    import gguf   # numpy-heavy; only commands that look inside a file pay for it

    path = Path(name)

    parts = [Path(p) for p in refs.split_parts(str(path))]
    for i, part in enumerate(parts):
        ggufcheck.check(part, part=i > 0)
    try:
        reader = gguf.GGUFReader(parts[0])
        fields = {name: _value(f) for name, f in reader.fields.items() if not name.startswith("tokenizer.ggml.")}
        parameters = sum(int(t.n_elements) for t in reader.tensors)
        types = [t.tensor_type.name for t in reader.tensors]
        for part in parts[1:]:
            more = gguf.GGUFReader(part)
            parameters += sum(int(t.n_elements) for t in more.tensors)
            types += [t.tensor_type.name for t in more.tensors]
    except (ValueError, KeyError, IndexError, OSError) as e:
        raise UnsafeModelFile(f"{path.name}: the GGUF reader could not read it ({e})") from None
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
        quant=_file_type(fields.get("general.file_type"), types, gguf), context_length=num("context_length"),
        layers=num("block_count"), kv_width=width, chat_template=_str(fields.get("tokenizer.chat_template")),
        license=str(fields.get("general.license", "")),
    )


def _value(field):
    try:
        value = field.contents()
    except (ValueError, IndexError, TypeError):
        return None
    return value


def _str(value) -> str | None:
    return value if isinstance(value, str) else None


def _file_type(value, types: list[str], gguf) -> str:
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
