"""Entry points for `reverb convert` and `reverb export-hf` (filled in by convert/hf_to_gguf.py)."""


def run(args) -> int:
    raise SystemExit("convert: not implemented yet")
