"""A pure-Python pre-check of a GGUF file before llama.cpp sees it. Model files are untrusted input.

It walks the header with hard limits (magic, version, counts, string and array lengths, tensor dimensions and
types, and every tensor's data range against the file size), reading only the header through a memory map and
counting the strings it walks against file-wide caps, so a truncated or hostile file is refused in bounded time
and memory. A file with no tensors or no architecture is not a model and is refused at once. It does not prove
llama.cpp will load the file; ``backends/llama/probe.py`` loads it in a child process first for that.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from ..errors import UnsafeModelFile

MAX_TENSORS = 1 << 16
MAX_KV = 1 << 16
MAX_STRING = 64 << 20         # one string (a chat template is the biggest legitimate one)
MAX_ARRAY = 1 << 22           # elements in one array (vocabularies and merges are ~10^5)
MAX_STRING_ELEMENTS = 1 << 22  # strings in all arrays together: bounds the work per file
MAX_STRING_BYTES = 256 << 20   # bytes of all strings together
MAX_DIMS = 4
DEFAULT_ALIGNMENT = 32
# GGUF value type -> (struct format, size); 8 = string, 9 = array
SCALARS = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4), 6: ("<f", 4),
           7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8)}
_U64 = struct.Struct("<Q")
SMALL_ARRAY = 4096            # scalar arrays up to this many elements are kept (per-layer values); longer are skipped


class _Reader:
    """Reads the header from a memory map, counting the work it does against the file-wide caps."""

    def __init__(self, buf, size: int):
        self.buf, self.size, self.pos = buf, size, 0
        self.strings = 0
        self.string_bytes = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise UnsafeModelFile("GGUF header runs past the end of the file (truncated?)")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise UnsafeModelFile("GGUF header runs past the end of the file (truncated?)")
        self.pos += n

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def string(self, limit: int = MAX_STRING, keep: bool = True) -> str | None:
        n = self.u64()
        if n > limit:
            raise UnsafeModelFile(f"GGUF string of {n} bytes is over the limit")
        self._count(1, n)
        if not keep:
            self.skip(n)
            return None
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise UnsafeModelFile("GGUF string is not UTF-8") from None

    def skip_strings(self, count: int) -> None:
        """Walk over an array of strings: only their lengths are read (a tight loop over the map)."""
        self._count(count, 0)
        buf, pos, size, total = self.buf, self.pos, self.size, 0
        for _ in range(count):
            if pos + 8 > size:
                raise UnsafeModelFile("GGUF header runs past the end of the file (truncated?)")
            n = _U64.unpack_from(buf, pos)[0]
            if n > MAX_STRING:
                raise UnsafeModelFile(f"GGUF string of {n} bytes is over the limit")
            pos += 8 + n
            total += n
        if pos > size:
            raise UnsafeModelFile("GGUF header runs past the end of the file (truncated?)")
        self.pos = pos
        self._count(0, total)

    def _count(self, strings: int, nbytes: int) -> None:
        self.strings += strings
        self.string_bytes += nbytes
        if self.strings > MAX_STRING_ELEMENTS or self.string_bytes > MAX_STRING_BYTES:
            raise UnsafeModelFile("GGUF metadata holds more strings than any model needs: over the limit")


@dataclass(frozen=True)
class Header:
    """What the walk kept: every metadata value except string arrays and long scalar arrays (None), and each
    tensor's (name, dims, type)."""
    version: int
    kv: dict
    tensors: list


def check(path: Path, part: bool = False) -> dict:
    """Validate ``path``; returns a small summary. Raises UnsafeModelFile naming what is wrong. ``part``: a second
    or later part of a multi-part GGUF, which may hold no tensors and names no architecture."""
    h = header(path, part)
    return {"version": h.version, "tensors": len(h.tensors), "kv": len(h.kv), "architecture": h.kv.get(
        "general.architecture")}


def header(path: Path, part: bool = False) -> Header:
    """Validate ``path`` as ``check`` does and return its header (``models/ggufinfo.py`` reads it: a fraction of a
    second, where the ``gguf`` package's reader builds an array per vocabulary string)."""
    try:
        st = os.stat(path)  # follows links: the HF cache links snapshots to blobs
    except OSError:
        raise UnsafeModelFile("model file not found") from None
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeModelFile("model path is not a regular file")
    if st.st_size < 24:
        raise UnsafeModelFile("GGUF header runs past the end of the file (truncated?)")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        r = _Reader(buf, st.st_size)
        if r.take(4) != b"GGUF":
            raise UnsafeModelFile("not a GGUF file (bad magic)")
        version = r.u32()
        if version not in (2, 3):
            raise UnsafeModelFile(f"unsupported GGUF version {version}")
        n_tensors, n_kv = r.u64(), r.u64()
        if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
            raise UnsafeModelFile("GGUF tensor or metadata count is over the limit")
        alignment = DEFAULT_ALIGNMENT
        arch = None
        kv = {}
        for _ in range(n_kv):
            key = r.string(limit=1 << 16)
            vtype = r.u32()
            value = kv[key] = _value(r, vtype, depth=0)
            if key == "general.alignment":
                if not isinstance(value, int) or value <= 0 or value & (value - 1) or value > 1 << 16:
                    raise UnsafeModelFile("general.alignment must be a power of two")
                alignment = value
            elif key == "general.architecture":
                arch = value
        tensors = []
        for _ in range(n_tensors):
            name = r.string(limit=1 << 12)
            n_dims = r.u32()
            if not 1 <= n_dims <= MAX_DIMS:
                raise UnsafeModelFile(f"tensor {name!r} has {n_dims} dimensions")
            dims = [r.u64() for _ in range(n_dims)]
            ttype = r.u32()
            offset = r.u64()
            tensors.append((name, dims, ttype, offset))
        data_start = -(-r.pos // alignment) * alignment
        data_size = st.st_size - data_start
    for name, dims, ttype, offset in tensors:
        try:
            block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
        except (ValueError, KeyError):
            raise UnsafeModelFile(f"tensor {name!r} has unknown type {ttype}") from None
        if any(d == 0 or d > 1 << 40 for d in dims) or dims[0] % block:
            raise UnsafeModelFile(f"tensor {name!r} has invalid dimensions {dims}")
        elements = 1
        for d in dims:
            elements *= d
        size = elements // block * nbytes
        if data_size < 0 or offset % alignment or offset + size > data_size:
            raise UnsafeModelFile(f"tensor {name!r} data lies outside the file")
    if not part and not tensors:
        raise UnsafeModelFile("GGUF file holds no tensors: not a model")
    if not part and (not isinstance(arch, str) or not arch):
        raise UnsafeModelFile("GGUF file names no general.architecture: not a model llama.cpp can load")
    return Header(version, kv, tensors)


def _value(r: _Reader, vtype: int, depth: int):
    if vtype in SCALARS:
        fmt, size = SCALARS[vtype]
        return struct.unpack(fmt, r.take(size))[0]
    if vtype == 8:
        return r.string()
    if vtype == 9:
        if depth:
            raise UnsafeModelFile("nested GGUF arrays are not allowed")
        etype, count = r.u32(), r.u64()
        if count > MAX_ARRAY:
            raise UnsafeModelFile(f"GGUF array of {count} elements is over the limit")
        if etype in SCALARS:
            fmt, size = SCALARS[etype]
            if count <= SMALL_ARRAY:
                return list(struct.unpack(f"<{count}{fmt[1]}", r.take(count * size)))
            r.skip(count * size)
        elif etype == 8:
            r.skip_strings(count)
        else:
            raise UnsafeModelFile(f"GGUF array of type {etype} is not allowed")
        return None
    raise UnsafeModelFile(f"unknown GGUF value type {vtype}")
