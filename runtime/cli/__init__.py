"""The ``reverb`` command. Each sub-command lives in its own module; this one builds the parser and dispatches.

Flags that are settings are generated from the Settings fields (``flags.py``); the rest are declared with
their sub-command. Every sub-command and argument has a help line (a test holds this).
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import ReverbError
from . import chat, keys, models, ps, serve, usage
from .flags import add_settings


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version
    try:
        return dist_version("reverb-runtime")
    except PackageNotFoundError:
        return "unknown"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="reverb", description="Serve GGUF chat models offline, over the OpenAI API "
                                 "and a credit-checked gateway API.")
    ap.add_argument("--version", action="version", version=f"reverb-runtime {version()}",
                    help="print the version and exit")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    add_settings(common, "common")
    common.add_argument("-v", "--verbose", action="store_true",
                        help="also show other libraries' info lines (default: their warnings only)")
    for module in (serve, chat, models, ps, keys, usage):
        module.add_parsers(sub, [common])
    return ap


def setup_logging(args) -> None:
    """reverb's own lines at info (warnings only in a chat); other libraries' (httpx, gguf, huggingface_hub) at
    warning unless --verbose."""
    verbose = getattr(args, "verbose", False)
    ours = logging.WARNING if args.cmd in ("chat", "run") and not verbose else logging.INFO
    if getattr(args, "log_format", None) == "json":
        fmt = "%(message)s"
    elif args.cmd in ("chat", "run"):
        fmt = "%(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=fmt)
    logging.getLogger("reverb").setLevel(ours)


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.cmd is None:
        ap.print_help()
        return 0
    setup_logging(args)
    try:
        return args.run(args)
    except ReverbError as e:
        print(f"reverb: error: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
