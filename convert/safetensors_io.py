"""Reading and writing the safetensors format with numpy: an 8-byte header length, a JSON header, raw tensors.

Small enough to own: tensors are memory-mapped, so converting a 7B checkpoint never holds it all in memory.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I32": np.int32, "I64": np.int64}
MAX_HEADER = 100 << 20


class SafetensorsError(ValueError):
    pass


def read(path: Path) -> dict[str, np.ndarray]:
    """Tensor name -> array (memory-mapped). BF16 is widened to float32. Raises SafetensorsError."""
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
        if info["dtype"] == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr
    return out


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
    header, offset = {}, 0
    rev = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}
    for name, arr in tensors.items():
        nbytes = arr.nbytes
        header[name] = {"dtype": rev[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for arr in tensors.values():
            f.write(np.ascontiguousarray(arr).tobytes())
    os.replace(tmp, path)
