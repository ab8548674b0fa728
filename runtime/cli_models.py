"""``reverb models``, ``pull``, ``rm`` and the model tools (``convert``, ``quantize``, ``eval``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import registry
from .config import Settings
from .errors import ConfigError


def add_parsers(sub, common) -> None:
    p = sub.add_parser("pull", help="download a hub model into the HF cache and verify it", parents=common)
    p.add_argument("name")
    p.add_argument("--offline", action="store_true", help="cache only (also HF_HUB_OFFLINE=1)")
    r = sub.add_parser("rm", help="remove a pulled model's local files", parents=common)
    r.add_argument("name")
    c = sub.add_parser("convert", help="Hugging Face safetensors checkpoint -> GGUF")
    c.add_argument("hf_dir", type=Path)
    c.add_argument("-o", "--output", type=Path, required=True)
    c.add_argument("--outtype", choices=["f32", "f16", "bf16", "q8_0"], default="f16")
    c.add_argument("--pre", help="llama.cpp pre-tokenizer name (default: detected from tokenizer.json)")
    e = sub.add_parser("export-hf", help="GGUF (llama architecture) -> Hugging Face directory (for round trips)")
    e.add_argument("gguf", type=Path)
    e.add_argument("-o", "--output", type=Path, required=True)
    q = sub.add_parser("quantize", help="quantize a GGUF with llama.cpp's quantizer")
    q.add_argument("input", type=Path)
    q.add_argument("output", type=Path)
    q.add_argument("--type", required=True, choices=["Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "Q4_0", "F16", "F32"])
    v = sub.add_parser("eval", help="quality report: perplexity, KL divergence and top-1 agreement vs a reference")
    v.add_argument("model", type=Path)
    v.add_argument("--ref", type=Path, required=True)
    v.add_argument("--text", type=Path, help="text file (default: the one shipped in convert/data)")
    v.add_argument("--ctx", type=int, default=512)
    v.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    if args.cmd in ("convert", "export-hf"):
        from convert import cli as convert_cli
        return convert_cli.run(args)
    if args.cmd == "quantize":
        return quantize(args)
    if args.cmd == "eval":
        from . import evaluate
        return evaluate.main(args)
    settings = Settings.build(models_path=getattr(args, "models_path", None))
    reg = registry.load(settings.models_path)
    if args.cmd == "models":
        return models(reg)
    from . import download
    spec = _resolve(reg, args.name)
    if args.cmd == "pull":
        path = download.pull(spec, offline=args.offline)
        print(f"{spec.name}: {path} ({path.stat().st_size / 1e6:.1f} MB)" + (", sha256 verified" if spec.sha256
                                                                             else ""))
        return 0
    if args.cmd == "rm":
        if spec.source != "hf":
            raise ConfigError(f"model '{spec.name}' is not a pulled model (source = {spec.source}); nothing to remove")
        freed = download.remove(spec)
        print(f"{spec.name}: removed {freed / 1e6:.1f} MB" if freed else f"{spec.name}: not present locally")
        return 0
    raise SystemExit(f"unknown command {args.cmd}")


def _resolve(reg, name: str):
    if not registry.NAME_RE.match(name):
        raise ConfigError(f"not a model name: {name!r}")
    return reg.resolve(name)


def local(spec) -> Path | None:
    if spec.source == "hf":
        from . import download
        return download.cached_path(spec)
    return registry.local_path(spec)


def models(reg) -> int:
    print(f"{'name':<16} {'source':<8} {'quant':<8} {'ctx':>6} {'in/1M':>8} {'out/1M':>8}  {'local':<12} where")
    for spec in reg.specs.values():
        path = local(spec)
        present = f"yes {path.stat().st_size / 1e6:.0f} MB" if path else "no"
        where = f"{spec.repo}/{spec.file}" if spec.source == "hf" else (spec.package or spec.file)
        prices = f"{registry.format_money(spec.price_input):>8} {registry.format_money(spec.price_output):>8}"
        print(f"{spec.name:<16} {spec.source:<8} {spec.quant:<8} {spec.ctx:>6} {prices}  {present:<12} {where}")
    return 0


def quantize(args) -> int:
    from . import engine
    from .errors import ModelLoadError
    if not args.input.is_file():
        raise ConfigError(f"{args.input}: not a file")
    tmp = args.output.with_name(args.output.name + ".tmp")
    try:
        engine.quantize(args.input, tmp, args.type)
        tmp.replace(args.output)  # atomic: a failed quantization never leaves a half file under the real name
    except ModelLoadError:
        tmp.unlink(missing_ok=True)
        raise
    print(f"{args.output}: {args.output.stat().st_size / 1e6:.1f} MB ({args.type})", file=sys.stdout)
    return 0
