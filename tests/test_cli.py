"""The command line itself: help everywhere, --version, flags generated from the settings."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import fields

from reverb.cli import parser
from reverb.cli.flags import settings_from
from reverb.settings import Settings, env_name


def walk(p: argparse.ArgumentParser, path=("reverb",)):
    yield path, p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                assert choice.help, f"{' '.join(path)} {choice.dest} has no help line"
            for name, sub in action.choices.items():
                yield from walk(sub, (*path, name))


def test_every_command_and_argument_has_a_help_line():
    seen = 0
    for path, p in walk(parser()):
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{' '.join(path)} {action.option_strings or action.dest} has no help line"
            seen += 1
    assert seen > 60


def test_every_serve_setting_is_a_flag_with_its_default_and_env_name():
    serve = dict(walk(parser()))[("reverb", "serve")]
    by_dest = {a.dest: a for a in serve._actions}
    for f in fields(Settings):
        if f.metadata.get("cli"):
            action = by_dest[f.name]
            assert env_name(f.name) in action.help
    args = parser().parse_args(["serve", "--parallel", "3", "--no-flash-attn", "--api-key", "a", "--api-key", "b",
                                "--allowed-host", "x.lan"])
    s = settings_from(args)
    assert (s.parallel, s.flash_attn, s.api_keys, s.allowed_hosts) == (3, False, ("a", "b"), ("x.lan",))
    assert s.prefill_chunk == Settings().prefill_chunk  # the CLI adds no defaults of its own


def test_bare_reverb_prints_help_and_version_works():
    bare = subprocess.run([sys.executable, "-m", "reverb"], capture_output=True, text=True)
    assert bare.returncode == 0 and "serve" in bare.stdout and "usage:" in bare.stdout
    v = subprocess.run([sys.executable, "-m", "reverb", "--version"], capture_output=True, text=True)
    assert v.returncode == 0 and v.stdout.startswith("reverb-runtime ")
