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
        elif args.cmd == "synthetic":
            run_synthetic(args)
        else:
            from .gguf_to_hf import export
            info = export(args.gguf, args.output)
            print(f"{info['dir']}: {info['tensors']} tensors")
    except (ConvertError, TokenizerError, SafetensorsError, OSError, ValueError) as e:  # gguf-py raises ValueError
        print(f"reverb: error: {e}", file=sys.stderr)
        return 2
    return 0


def run_synthetic(args) -> None:
    """`reverb synthetic DIR`: a random Qwen2 checkpoint of the preset's shape, with any size flag overriding it."""
    import dataclasses
    import time

    from . import synthetic
    sizes = {f.name: getattr(args, f.name) for f in dataclasses.fields(synthetic.Shape)
             if getattr(args, f.name, None) is not None}
    shape = dataclasses.replace(synthetic.PRESETS[args.preset], **sizes)
    merges = synthetic.BYTE_MERGES if args.byte_tokens else synthetic.MERGES
    t0 = time.monotonic()
    info = synthetic.write(args.output, shape, args.seed, args.dtype, shards=args.shards, merges=merges)
    print(f"{args.output}: Qwen2ForCausalLM, {info['parameters'] / 1e6:,.1f}M parameters (hidden {shape.hidden}, "
          f"ffn {shape.ffn}, {shape.layers} layers, {shape.heads} heads / {shape.kv_heads} kv), {args.dtype}, "
          f"{info['bytes'] / 1e6:.1f} MB in {time.monotonic() - t0:.0f} s")
