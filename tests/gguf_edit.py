"""Make variants of a GGUF file: change or drop metadata, keep the tensors as they are.

Unchanged fields, the tensor infos and the tensor data are copied as bytes; only the changed fields are encoded.
The tests read the results back with the gguf package's reader and with reverb's own pre-check.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import gguf

T = gguf.GGUFValueType
_SCALAR = {T.UINT8: "B", T.INT8: "b", T.UINT16: "H", T.INT16: "h", T.UINT32: "I", T.INT32: "i",
           T.FLOAT32: "f", T.UINT64: "Q", T.INT64: "q", T.FLOAT64: "d", T.BOOL: "?"}


def _value(value, vtype: gguf.GGUFValueType, sub: gguf.GGUFValueType | None) -> bytes:
    if vtype in _SCALAR:
        return struct.pack("<" + _SCALAR[vtype], value)
    if vtype == T.STRING:
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        return struct.pack("<Q", len(data)) + data
    if vtype == T.ARRAY:
        return struct.pack("<IQ", sub, len(value)) + b"".join(_value(v, sub, None) for v in value)
    raise ValueError(f"unsupported GGUF value type {vtype}")


def _field(key: str, value, vtype: gguf.GGUFValueType, sub: gguf.GGUFValueType | None = None) -> bytes:
    name = key.encode("utf-8")
    return struct.pack("<Q", len(name)) + name + struct.pack("<I", vtype) + _value(value, vtype, sub)


def _skip(buf: memoryview, pos: int, vtype: int) -> int:
    """The offset just past a value of ``vtype`` at ``pos``."""
    if vtype in _SCALAR:
        return pos + struct.calcsize("<" + _SCALAR[vtype])
    if vtype == T.STRING:
        return pos + 8 + struct.unpack_from("<Q", buf, pos)[0]
    sub, n = struct.unpack_from("<IQ", buf, pos)
    pos += 12
    if sub in _SCALAR:
        return pos + n * struct.calcsize("<" + _SCALAR[sub])
    for _ in range(n):
        pos = _skip(buf, pos, sub)
    return pos


def _string(buf: memoryview, pos: int) -> tuple[str, int]:
    n = struct.unpack_from("<Q", buf, pos)[0]
    return bytes(buf[pos + 8:pos + 8 + n]).decode("utf-8"), pos + 8 + n


def rewrite(src: Path, dst: Path, set_kv: dict | None = None, drop: set[str] = frozenset()) -> Path:
    """Copy ``src`` to ``dst`` with metadata keys replaced (value, or (value, GGUFValueType[, sub type])), added
    (a plain value is a string) or dropped. Only the header is parsed (a plain scan: the gguf package's reader
    builds an array per vocabulary string and took seconds); everything else is copied as bytes."""
    set_kv = dict(set_kv or {})
    with open(src, "rb") as f:
        head = f.read(64 << 20)  # the header of any model these tests use
    buf = memoryview(head)
    magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", buf, 0)
    assert magic == b"GGUF"
    pos, kvs, alignment = 24, [], 32
    for _ in range(n_kv):
        start = pos
        key, pos = _string(buf, pos)
        vtype = struct.unpack_from("<I", buf, pos)[0]
        sub = struct.unpack_from("<I", buf, pos + 4)[0] if vtype == T.ARRAY else None
        pos = _skip(buf, pos + 4, vtype)
        if key == "general.alignment":
            alignment = struct.unpack_from("<I", buf, pos - 4)[0]
        if key in drop:
            continue
        if key in set_kv:
            new = set_kv.pop(key)
            kvs.append(_field(key, *(new if isinstance(new, tuple) else (new, T(vtype), sub and T(sub)))))
        else:
            kvs.append(bytes(buf[start:pos]))
    for key, new in set_kv.items():
        kvs.append(_field(key, *(new if isinstance(new, tuple) else (new, T.STRING))))
    infos = pos
    for _ in range(n_tensors):
        _, pos = _string(buf, pos)
        n_dims = struct.unpack_from("<I", buf, pos)[0]
        pos += 4 + 8 * n_dims + 4 + 8
    data = pos + (-pos % alignment)
    out_head = struct.pack("<4sIQQ", magic, version, n_tensors, len(kvs)) + b"".join(kvs) + bytes(buf[infos:pos])
    out_head += b"\0" * (-len(out_head) % alignment)
    with open(dst, "wb") as out, open(src, "rb") as f:
        out.write(out_head)
        f.seek(data)
        shutil.copyfileobj(f, out, 1 << 22)
    return dst
