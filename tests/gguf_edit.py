"""Make variants of a GGUF file with the gguf package: change or drop metadata, keep the tensors as they are."""

from __future__ import annotations

from pathlib import Path

import gguf


def rewrite(src: Path, dst: Path, set_kv: dict | None = None, drop: set[str] = frozenset()) -> Path:
    """Copy ``src`` to ``dst`` with metadata keys replaced (value, or (value, GGUFValueType)) or dropped."""
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch)
    set_kv = dict(set_kv or {})
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in drop:
            continue
        vtype = field.types[0]
        value = field.contents()
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        if key in set_kv:
            new = set_kv.pop(key)
            value, vtype, sub = (new[0], new[1], new[2] if len(new) > 2 else None) if isinstance(new, tuple) \
                else (new, vtype, sub)
        w.add_key_value(key, value, vtype, sub_type=sub)
    for key, new in set_kv.items():
        value, vtype = new if isinstance(new, tuple) else (new, gguf.GGUFValueType.STRING)
        w.add_key_value(key, value, vtype)
    for t in r.tensors:
        w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)  # byte shape in, element shape recorded
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst
