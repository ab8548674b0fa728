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


# The help groups serve's flags by concern: a group starts at the first of these fields (in Settings' order) and
# holds the fields after it until the next, so a setting added at the end of its group lands in it.
GROUPS = {"models_path": "catalogue and ledger", "models": "models", "host": "network and keys",
          "threads": "engine (llama.cpp)", "pull": "model files", "on_demand": "models on demand",
          "max_body_bytes": "HTTP limits", "ready_file": "operations"}


def add_settings(parser: argparse.ArgumentParser, scope: str) -> None:
    """Add a flag for every setting whose metadata names ``scope`` ("serve" or "common"), in argument groups by
    concern. Each help line names one default: the help's own "(default: ...)" when it explains it, else the value."""
    target = parser.add_argument_group("catalogue and ledger") if scope == "common" else parser
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(Settings):
        meta = f.metadata
        if f.name in GROUPS and scope == "serve" and f.name != "models_path":
            target = groups.setdefault(GROUPS[f.name], parser.add_argument_group(GROUPS[f.name]))
        if meta.get("cli") != scope:
            continue
        kind = field_type(f.name)
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        shown = "" if "default:" in meta["help"] else f"default: {_shown(f.default)}; "
        help_ = f"{meta['help']} ({shown}env {env_name(f.name)})"
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
        target.add_argument(flag, **kw)
        if meta.get("old_flag"):
            target.add_argument(meta["old_flag"], **{**kw, "dest": f.name + OLD, "help": f"deprecated: use {flag}"})


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


def markdown() -> str:
    """The docs' table of every setting: flag, environment variable, default and help (docs/operations.md holds
    it; ``python -m reverb.cli.docs`` writes and checks it)."""
    lines = ["| flag | environment | default | what it sets |", "|---|---|---|---|"]
    for f in fields(Settings):
        meta = f.metadata
        if meta.get("cli") is None:
            continue
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        text = meta["help"].replace("|", "\\|")
        scope = "" if meta["cli"] == "serve" else " (every command)"
        lines.append(f"| `{flag}`{scope} | `{env_name(f.name)}` | `{_shown(f.default)}` | {text} |")
    return "\n".join(lines) + "\n"
