"""``reverb models`` and the model tools (pull, rm, convert, quantize, eval)."""

from __future__ import annotations

from . import registry


def add_parsers(sub, common) -> None:
    pass


def run(args) -> int:
    from .config import Settings
    settings = Settings.build(models_path=getattr(args, "models_path", None))
    if args.cmd == "models":
        reg = registry.load(settings.models_path)
        print(f"{'name':<16} {'source':<8} {'quant':<8} {'ctx':>6} {'in/1M':>8} {'out/1M':>8}  local")
        for spec in reg.specs.values():
            path = registry.local_path(spec)
            local = f"yes {path.stat().st_size / 1e6:.0f} MB" if path else "no"
            prices = f"{registry.format_money(spec.price_input):>8} {registry.format_money(spec.price_output):>8}"
            print(f"{spec.name:<16} {spec.source:<8} {spec.quant:<8} {spec.ctx:>6} {prices}  {local}")
        return 0
    raise SystemExit(f"unknown command {args.cmd}")
