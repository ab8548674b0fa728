"""``reverb models list|pull|rm|show`` (also ``pull``, ``rm``, ``show`` on their own) and the model tools
(``convert``, ``export-hf``, ``quantize``, ``eval``).

A model is named as everywhere on the command line: a catalogue name, a GGUF file, or ``hf.co/owner/repo[:QUANT]``
(``models/refs.py``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
from importlib import resources
from pathlib import Path

from ..errors import ConfigError
from ..models import registry
from .flags import settings_from

EVAL_TEXT = resources.files("reverb.convert") / "data" / "eval.txt"   # shipped as package data


MODEL_HELP = "a catalogue name, a .gguf file, or hf.co/OWNER/REPO[:QUANT]"


def _model_commands(sub, common) -> None:
    """pull, rm and show: under ``reverb models`` and, as short forms, at the top level."""
    p = sub.add_parser("pull", help="download a hub model into the HF cache and verify it", parents=common)
    p.add_argument("name", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--offline", action="store_true", help="cache only (also HF_HUB_OFFLINE=1)")
    p.set_defaults(run=pull)
    r = sub.add_parser("rm", help="remove a pulled model's local files", parents=common)
    r.add_argument("name", metavar="MODEL", help=MODEL_HELP)
    r.set_defaults(run=rm)
    s = sub.add_parser("show", help="what a model's GGUF says: architecture, parameters, quant, context, template, "
                       "license", parents=common)
    s.add_argument("name", metavar="MODEL", help=MODEL_HELP)
    s.add_argument("--template", action="store_true", help="print the whole chat template")
    s.set_defaults(run=show)


def add_parsers(sub, common) -> None:
    m = sub.add_parser("models", help="the catalogue and local models: list, pull, rm, show", parents=common,
                       description="Without a sub-command: list.")
    m.set_defaults(run=models)
    msub = m.add_subparsers(dest="models_cmd", metavar="COMMAND")
    lst = msub.add_parser("list", help="list the catalogue and which models are present locally", parents=common)
    lst.set_defaults(run=models)
    _model_commands(msub, common)
    _model_commands(sub, common)
    c = sub.add_parser("convert", help="Hugging Face safetensors checkpoint -> GGUF")
    c.add_argument("hf_dir", type=Path, help="directory with config.json, *.safetensors and tokenizer.json")
    c.add_argument("-o", "--output", type=Path, required=True, help="the GGUF file to write")
    c.add_argument("--outtype", choices=["f32", "f16", "bf16", "q8_0"], default="f16", help="tensor type (default f16)")
    c.add_argument("--pre", help="llama.cpp pre-tokenizer name (default: detected from tokenizer.json)")
    c.set_defaults(run=convert)
    y = sub.add_parser("synthetic", help="a Qwen2 checkpoint with random weights at a chosen size (for tests and "
                       "benchmarks; its output is not language)")
    y.add_argument("output", type=Path, metavar="DIR", help="the directory to write (then: reverb convert DIR -o ...)")
    y.add_argument("--preset", choices=["tiny", "1b"], default="1b", help="the shape to start from (default 1b: "
                   "hidden 2048, ffn 5632, 22 layers, 32 heads, 4 kv heads, 0.97B parameters)")
    for flag, what in (("hidden", "hidden size"), ("ffn", "MLP size"), ("layers", "layers"),
                       ("heads", "attention heads"), ("kv-heads", "key/value heads"), ("ctx", "trained context")):
        y.add_argument(f"--{flag}", type=int, help=f"{what} (default: the preset's)")
    y.add_argument("--seed", type=int, default=0, help="random seed (the same arguments write the same weights)")
    y.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="bf16", help="tensor type (default bf16)")
    y.add_argument("--shards", type=int, default=1, help="safetensors files to split the tensors over (default 1)")
    y.add_argument("--byte-tokens", action="store_true", help="ASCII text is one token per byte (no merges that "
                   "ASCII can use), so any ASCII text tokenizes back to the tokens that made it")
    y.set_defaults(run=convert)
    e = sub.add_parser("export-hf", help="GGUF (llama architecture) -> Hugging Face directory (for round trips)")
    e.add_argument("gguf", type=Path, help="the GGUF file to read")
    e.add_argument("-o", "--output", type=Path, required=True, help="the directory to write")
    e.set_defaults(run=convert)
    q = sub.add_parser("quantize", help="quantize a GGUF with llama.cpp's quantizer")
    q.add_argument("input", type=Path, help="the GGUF to quantize")
    q.add_argument("output", type=Path, help="the GGUF to write")
    q.add_argument("--type", required=True, choices=["Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "Q4_0", "F16", "F32"],
                   help="quantization type")
    q.set_defaults(run=quantize)
    v = sub.add_parser("eval", help="quality report: perplexity, KL divergence and top-1 agreement vs a reference")
    v.add_argument("model", type=Path, help="the GGUF to score")
    v.add_argument("--ref", type=Path, required=True, help="the reference GGUF (e.g. the F16 or F32 original)")
    v.add_argument("--text", type=Path, help="text file (default: the one shipped with reverb)")
    v.add_argument("--ctx", type=int, default=512, help="tokens per window (default 512)")
    v.add_argument("--threads", type=int, default=None,
                   help="llama.cpp threads (default: $REVERB_THREADS, else 0: the cores this process may use)")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(run=evaluate)


def _catalogue(args) -> registry.Registry:
    return registry.load(settings_from(args).catalogue_path)


def _resolve(reg, name: str):
    """The spec a command-line model reference names (refs.py). Raises ConfigError or ModelNotFound."""
    from ..models import refs
    extended, names = refs.resolve(reg, (name,))
    return extended.specs[names[0]]


def local(spec) -> Path | None:
    if spec.source == "hf":
        from ..models import download
        return download.cached_path(spec)
    return registry.local_path(spec)


def models(args) -> int:
    """The catalogue: local models (present or not, with their size) and upstream entries (served elsewhere; the
    upstream's own model name and where it is; never the key, only the variable that holds it)."""
    reg = _catalogue(args)
    print(f"{'name':<16} {'source':<8} {'provider':<12} {'quant':<8} {'ctx':>7} {'in/1M':>8} {'out/1M':>8}  "
          f"{'local':<12} where")
    for spec in reg.specs.values():
        if spec.upstream:
            provider, present = spec.provider, "upstream"
            where = f"{spec.upstream_model} at {spec.base_url}" + (f" (key: ${spec.api_key_env})"
                                                                    if spec.api_key_env else "")
        else:
            path = local(spec)
            provider, present = "llama.cpp", f"yes {path.stat().st_size / 1e6:.0f} MB" if path else "no"
            where = f"{spec.repo}/{spec.file}" if spec.source == "hf" else (spec.package or spec.file)
        prices = f"{registry.format_money(spec.price_input):>8} {registry.format_money(spec.price_output):>8}"
        print(f"{spec.name:<16} {spec.source:<8} {provider[:12]:<12} {spec.quant or '-':<8} {spec.ctx:>7} {prices}  "
              f"{present:<12} {where}")
    from ..models import download, refs
    pulled = [(name, file, size) for name, file, size in download.cached_models()
              if not any(s.repo and s.file == file and name.startswith(f"hf.co/{s.repo}") for s in reg.specs.values())]
    if pulled:
        print("\npulled from the hub (serve or chat with the name on the left):")
        for name, file, size in pulled:
            parts = len(refs.split_parts(file))
            print(f"{name:<60} {size / 1e6:>8.0f} MB" + (f" ({parts} parts)" if parts > 1 else ""))
    return 0


def pull(args) -> int:
    from ..models import download, refs
    spec = _resolve(_catalogue(args), args.name)
    if spec.source != "hf":
        where = registry.local_path(spec)
        print(f"{spec.name}: nothing to pull (source = {spec.source}" + (f", {where}" if where else "") + ")")
        return 0
    path = download.pull(spec, offline=args.offline)
    parts = [path.with_name(p) for p in refs.split_parts(path.name)]
    size = sum(p.stat().st_size for p in parts)
    print(f"{spec.name}: {path} ({size / 1e6:.1f} MB" + (f", {len(parts)} parts" if len(parts) > 1 else "") + ")"
          + (", sha256 verified" if spec.sha256 else ""))
    return 0


def show(args) -> int:
    from ..loader import locate, model_ctx
    from ..models import ggufinfo
    settings = settings_from(args)
    spec = _resolve(registry.load(settings.catalogue_path), args.name)
    if spec.upstream:
        print(f"{spec.name}: served by an upstream: {spec.upstream_model} at {spec.base_url}")
        return 0
    path = locate(spec, settings, resolve_only=True)
    if path is None:
        raise ConfigError(f"{spec.name} is not on this machine; run `reverb pull {args.name}` first")
    info = ggufinfo.read(path)
    template = info.chat_template or ""
    rows = [("model", spec.name), ("file", str(path) + (f" (+{info.parts - 1} parts)" if info.parts > 1 else "")),
            ("name", info.name or "-"), ("architecture", info.architecture),
            ("parameters", f"{ggufinfo.human_count(info.parameters)} ({info.parameters:,})"),
            ("quant", info.quant or "-"), ("size", f"{info.file_bytes / 1e6:.1f} MB"),
            ("context", f"{info.context_length or '?'} trained; served with {model_ctx(spec, settings, info)} per "
                        "slot"),
            ("license", info.license or "-"),
            ("prices", f"{registry.format_money(spec.price_input)} in, {registry.format_money(spec.price_output)} "
                       "out per 1M tokens"),
            ("template", f"{len(template.splitlines())} lines" + ("" if args.template else
                                                                   " (--template prints it)") if template else
             "none in the file (ChatML is used)")]
    for key, value in rows:
        print(f"{key:<13} {value}")
    if args.template and template:
        print(template)
    return 0


def rm(args) -> int:
    from ..models import download
    spec = _resolve(_catalogue(args), args.name)
    if spec.source != "hf":
        raise ConfigError(f"model '{spec.name}' is not a pulled model (source = {spec.source}); nothing to remove"
                          + (" (reverb never deletes a file you named)" if spec.source == "file" else ""))
    freed = download.remove(spec)
    print(f"{spec.name}: removed {freed / 1e6:.1f} MB" if freed else f"{spec.name}: not present locally")
    return 0


def convert(args: argparse.Namespace) -> int:
    from ..convert import cli as convert_cli
    return convert_cli.run(args)


def quantize(args) -> int:
    from ..backends.llama import engine
    from ..errors import ModelLoadError
    if not args.input.is_file():
        raise ConfigError(f"{args.input}: not a file")
    tmp = args.output.with_name(args.output.name + ".tmp")
    bar = _Progress(f"quantizing to {args.type}")
    try:
        with bar.capturing(logging.getLogger("reverb.engine")):
            engine.quantize(args.input, tmp, args.type)
        tmp.replace(args.output)  # atomic: a failed quantization never leaves a half file under the real name
    except ModelLoadError:
        tmp.unlink(missing_ok=True)
        raise
    print(f"{args.output}: {args.output.stat().st_size / 1e6:.1f} MB ({args.type})", file=sys.stdout)
    return 0


class _Progress(logging.Handler):
    """llama.cpp's quantize lines ("[  12/ 272] name - ...", logged by the engine at DEBUG) as one tensor-count
    progress bar on stderr (tqdm, as huggingface_hub's downloads show theirs); its other lines are dropped, except
    errors."""

    LINE = re.compile(r"^llama\.cpp: \[\s*(\d+)/\s*(\d+)\]")

    def __init__(self, what: str):
        super().__init__(logging.DEBUG)
        self.what, self.bar = what, None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        m = self.LINE.match(message)
        if m:
            self.update(int(m.group(1)), int(m.group(2)))
        elif record.levelno >= logging.ERROR:
            print(f"reverb: {message}", file=sys.stderr)

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=self.what, unit="tensor", file=sys.stderr, leave=True)
        self.bar.n = done
        self.bar.refresh()

    @contextlib.contextmanager
    def capturing(self, logger: logging.Logger):
        level, propagate = logger.level, logger.propagate
        logger.addHandler(self)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        try:
            yield self
        finally:
            logger.removeHandler(self)
            logger.setLevel(level)
            logger.propagate = propagate
            if self.bar is not None:
                self.bar.close()


def evaluate(args) -> int:
    from ..backends.llama.evaluate import compare
    if args.text is not None:
        where, text = str(args.text), Path(args.text).read_text(encoding="utf-8")
    else:
        where, text = "eval.txt (shipped with reverb)", EVAL_TEXT.read_text(encoding="utf-8")
    threads = args.threads if args.threads is not None else os.environ.get("REVERB_THREADS") or "0"
    if not str(threads).isdigit():   # read here, not when the parser is built (every command builds it)
        print("reverb eval: --threads / REVERB_THREADS must be 0 (the usable cores) or more, "
              f"not {str(threads)[:40]!r}", file=sys.stderr)
        return 2
    report = compare(args.model, args.ref, text, args.ctx, int(threads))
    if args.json:
        print(json.dumps(report))
    else:
        print(f"text: {where} ({report['tokens']} tokens scored)")
        print(f"perplexity  model {report['ppl_model']:.4f}   reference {report['ppl_ref']:.4f}")
        print(f"KL(ref || model) mean per token: {report['kl_mean']:.6f}")
        print(f"top-1 agreement: {report['top1_agreement'] * 100:.2f}%")
    return 0
