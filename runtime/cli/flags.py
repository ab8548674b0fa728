"""CLI flags generated from the Settings fields: one declaration gives the flag, its help, default and env name."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from ..settings import Settings, env_name, field_type

OLD = "__old_flag"   # dest suffix of a setting's deprecated flag


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return "none" if not value else ",".join(value)
    return "none" if value is None else str(value)


def add_settings(parser: argparse.ArgumentParser, scope: str) -> None:
    """Add a flag for every setting whose metadata names ``scope`` ("serve" or "common")."""
    for f in fields(Settings):
        meta = f.metadata
        if meta.get("cli") != scope:
            continue
        kind = field_type(f.name)
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        help_ = f"{meta['help']} (default: {_shown(f.default)}; env {env_name(f.name)})"
        kw: dict = {"dest": f.name, "default": None, "help": help_}
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif kind is tuple:
            kw.update(action="append", metavar=meta.get("metavar", "VALUE"))
        else:
            kw["type"] = Path if kind is Path else kind
            if "choices" in meta:
                kw["choices"] = meta["choices"]
            elif "metavar" in meta:
                kw["metavar"] = meta["metavar"]
        parser.add_argument(flag, **kw)
        if meta.get("old_flag"):
            parser.add_argument(meta["old_flag"], **{**kw, "dest": f.name + OLD, "help": f"deprecated: use {flag}"})


def settings_from(args: argparse.Namespace, **extra) -> Settings:
    """Settings from the flags that were given (and REVERB_* / defaults for the rest). Raises ConfigError."""
    given = {}
    for f in fields(Settings):
        value = getattr(args, f.name, None)
        if value is None and getattr(args, f.name + OLD, None) is not None:
            value = getattr(args, f.name + OLD)
            print(f"reverb: note: {f.metadata['old_flag']} is deprecated; use {f.metadata['flag']}", file=sys.stderr)
        if value is not None:
            given[f.name] = tuple(value) if isinstance(value, list) else value
    return Settings.build(**{**given, **extra})
