"""Split a GGUF into parts as llama.cpp's gguf-split does (``name-00001-of-0000N.gguf``), with the gguf package's
writer: metadata in the first part, tensors spread over the parts, ``split.*`` keys in each."""

from __future__ import annotations

import types
from pathlib import Path
from unittest import mock

import gguf
import numpy as np


# numpy for gguf's reader, with ``memmap`` reading the whole file (~100 MB) into an ordinary array: the reader slices
# its data once per value (~250,000 slices for the tiny model's vocabulary), and slicing a memmap costs several times
# more (2.6 s of CPU for the whole split, against 0.9 s). The parts written are byte for byte the same.
_WHOLE_FILE_NUMPY = types.SimpleNamespace(**{**vars(np), "memmap": lambda path, mode="r": np.fromfile(path, np.uint8)})


def split(src: Path, dst: Path, max_tensors: int) -> list[Path]:
    """Write ``dst`` (a name ending in .gguf) as parts of at most ``max_tensors`` tensors; returns the parts."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with mock.patch.object(gguf.gguf_reader, "np", _WHOLE_FILE_NUMPY):
        reader = gguf.GGUFReader(src)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(dst, arch, split_max_tensors=max_tensors)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)   # t.data: the tensor's bytes, row by row
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return sorted(dst.parent.glob(dst.stem + "-*-of-*.gguf"))
