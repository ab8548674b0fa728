"""`reverb convert` and `reverb export-hf`: argument handling and clear errors for the converter."""

from __future__ import annotations

import sys

from .hf_to_gguf import ConvertError, convert
from .safetensors_io import SafetensorsError
from .tokenizer import TokenizerError


def run(args) -> int:
    try:
        if args.cmd == "convert":
            if not args.hf_dir.is_dir():
                raise ConvertError(f"{args.hf_dir}: not a directory")
            info = convert(args.hf_dir, args.output, args.outtype, args.pre)
            print(f"{args.output}: {info['architecture']}, {info['tensors']} tensors, {info['outtype']}, "
                  f"pre-tokenizer {info['pre']}, {info['bytes'] / 1e6:.1f} MB")
        else:
            from .gguf_to_hf import export
            info = export(args.gguf, args.output)
            print(f"{info['dir']}: {info['tensors']} tensors")
    except (ConvertError, TokenizerError, SafetensorsError, OSError, ValueError) as e:  # gguf-py raises ValueError
        print(f"reverb: error: {e}", file=sys.stderr)
        return 2
    return 0
