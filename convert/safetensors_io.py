"""Reading and writing the safetensors format with numpy: an 8-byte header length, a JSON header, raw tensors.

Small enough to own: tensors are memory-mapped, so converting a 7B checkpoint never holds it all in memory.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I32": np.int32, "I64": np.int64}
MAX_HEADER = 100 << 20


class SafetensorsError(ValueError):
    pass


def read(path: Path) -> dict[str, np.ndarray]:
    """Tensor name -> array (memory-mapped; BF16 as a ``BF16``, float32 when read). Raises SafetensorsError."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise SafetensorsError(f"{path.name}: too short")
        (n,) = struct.unpack("<Q", raw)
        if n > min(MAX_HEADER, size - 8):
            raise SafetensorsError(f"{path.name}: bad header length")
        header = json.loads(f.read(n))
    base = 8 + n
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise SafetensorsError(f"{path.name}: {name}: unsupported dtype {info.get('dtype')}")
        start, end = info["data_offsets"]
        if not 0 <= start <= end <= size - base:
            raise SafetensorsError(f"{path.name}: {name}: offsets outside the file")
        arr = mm[base + start: base + end].view(dtype).reshape(info["shape"])
        out[name] = BF16(arr) if info["dtype"] == "BF16" else arr
    return out


class BF16:
    """A memory-mapped BF16 tensor, widened to float32 only when it is read (``np.asarray``), so a converter that
    reads one tensor at a time holds one float32 tensor, not the whole checkpoint's."""

    def __init__(self, raw: np.ndarray):
        self.raw, self.shape, self.ndim, self.dtype = raw, raw.shape, raw.ndim, np.dtype(np.float32)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        arr = (self.raw.astype(np.uint32) << 16).view(np.float32)
        return arr if dtype is None else arr.astype(dtype, copy=False)


def read_dir(hf_dir: Path) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint directory: one file or shards (with or without an index)."""
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise SafetensorsError(f"{hf_dir}: no *.safetensors files")
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        for name, arr in read(f).items():
            if name in tensors:
                raise SafetensorsError(f"{name} appears in more than one shard")
            tensors[name] = arr
    return tensors


def write(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Write float32/float16 tensors, atomically (temp file, then rename)."""
    rev = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}
    write_stream(path, [(name, rev[arr.dtype], arr.shape) for name, arr in tensors.items()], iter(tensors.values()))


def write_stream(path: Path, specs: list[tuple[str, str, tuple[int, ...]]], arrays: Iterator[np.ndarray]) -> int:
    """Write tensors one at a time, atomically: ``specs`` are (name, "F32" | "F16" | "BF16", shape) and ``arrays``
    yields each one's values (any float dtype, converted here; BF16 rounded to nearest even) in the same order, so
    only one tensor is in memory at a time. Returns the file's size."""
    header, offset = {}, 0
    for name, dtype, shape in specs:
        nbytes = int(np.prod(shape)) * (4 if dtype == "F32" else 2)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)) + blob)
            for (name, dtype, shape), arr in zip(specs, arrays, strict=True):
                if tuple(arr.shape) != tuple(shape):
                    raise SafetensorsError(f"{name}: shape {arr.shape}, expected {tuple(shape)}")
                f.write(np.ascontiguousarray(_encode(arr, dtype)).tobytes())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(blob) + 8 + offset


def _encode(arr: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "F32":
        return arr.astype(np.float32, copy=False)
    if dtype == "F16":
        return arr.astype(np.float16)
    if dtype != "BF16":
        raise SafetensorsError(f"cannot write dtype {dtype}")
    bits = arr.astype(np.float32, copy=False).view(np.uint32)
    bits = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    return (bits >> np.uint32(16)).astype(np.uint16)
