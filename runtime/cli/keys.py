"""``reverb keys`` (create, update, show, list, revoke, rotate, topup) and ``reverb teams`` (create, update, show,
list, topup): keys, teams, their credit and settings, from the command line. Every action is logged in the ledger's
admin log as done by ``cli``."""

from __future__ import annotations

import argparse
import json

from ..errors import ConfigError
from ..models.registry import format_money, parse_money
from .flags import add_settings, settings_from

NONE = "none"   # `update --rpm none`: clear a setting


def _setting_flags(p, *, key: bool, update: bool) -> None:
    clear = " ('none' clears it)" if update else ""
    p.add_argument("--rpm", help=f"requests per minute, a sliding window{clear}")
    p.add_argument("--tpm", help=f"tokens per minute (prompt + max_tokens reserved, settled to real use){clear}")
    p.add_argument("--max-parallel", help=f"requests running at once{clear}")
    p.add_argument("--budget", help=f"credit per period, e.g. 5, separate from credit{clear}")
    p.add_argument("--period", help="the budget's calendar period: day, week (from Monday) or month (default)")
    p.add_argument("--tz", help="the time zone of the budget's periods, e.g. Europe/Paris (default UTC)")
    if key:
        p.add_argument("--expires", help=f"a date (the key works through that day, UTC) or ISO date-time{clear}")
        p.add_argument("--team", help=f"the team it belongs to{clear}")
        if update:
            p.add_argument("--admin", action="store_true", default=None, help="give it the admin role")
            p.add_argument("--no-admin", dest="admin", action="store_false", help="take the admin role away")
        else:
            p.add_argument("--admin", action="store_true", default=None,
                           help="an admin key: may manage keys and teams and read usage over HTTP")


def _with_allowlist() -> list:
    """The common flags with ``--models`` as the allowlist (the serve flag of that name means nothing here)."""
    own = argparse.ArgumentParser(add_help=False, conflict_handler="resolve")
    add_settings(own, "common")
    own.add_argument("--models", dest="allow_models",
                     help="comma-separated catalogue names or patterns it may use ('*': all, '': none; default '*')")
    return [own]


def add_parsers(sub, common) -> None:
    settable = _with_allowlist()
    k = sub.add_parser("keys", help="manage API keys and credit", description="Manage API keys, their credit "
                       "and settings (limits, models, budget, expiry, team, admin role).")
    ks = k.add_subparsers(dest="keys_cmd", required=True, metavar="ACTION")
    kc = ks.add_parser("create", help="create a key; prints it once, as the last line", parents=settable)
    kc.add_argument("name", help="the key's name, shown in usage and logs")
    kc.add_argument("--credit", default="0", help="starting credit, e.g. 5 or 0.25 (default 0)")
    _setting_flags(kc, key=True, update=False)
    ku = ks.add_parser("update", help="change a key's settings", parents=settable)
    ku.add_argument("name", help="the key's name")
    _setting_flags(ku, key=True, update=True)
    kshow = ks.add_parser("show", help="a key's settings and what it uses now", parents=common)
    kshow.add_argument("name", help="the key's name")
    ks.add_parser("list", help="list keys with balances and credit on hold", parents=common)
    kr = ks.add_parser("revoke", help="revoke a key (its name may then be given to a new key)", parents=common)
    kr.add_argument("name", help="the key's name")
    kro = ks.add_parser("rotate", help="a new secret for a key (same name, settings, credit and history); "
                        "prints it once, as the last line", parents=common)
    kro.add_argument("name", help="the key's name")
    kt = ks.add_parser("topup", help="add credit to a key", parents=common)
    kt.add_argument("name", help="the key's name")
    kt.add_argument("amount", help="credit to add, e.g. 2.50")
    k.set_defaults(run=keys)

    t = sub.add_parser("teams", help="manage teams of keys", description="Manage teams: their own credit, "
                       "limits, budget and models, which bind every key in the team (the tighter wins).")
    ts = t.add_subparsers(dest="teams_cmd", required=True, metavar="ACTION")
    tc = ts.add_parser("create", help="create a team", parents=settable)
    tc.add_argument("name", help="the team's name")
    tc.add_argument("--credit", help="the team's own credit, e.g. 50 (default: none, only its keys' credit)")
    _setting_flags(tc, key=False, update=False)
    tu = ts.add_parser("update", help="change a team's settings", parents=settable)
    tu.add_argument("name", help="the team's name")
    _setting_flags(tu, key=False, update=True)
    tshow = ts.add_parser("show", help="a team's settings, keys and what it uses now", parents=common)
    tshow.add_argument("name", help="the team's name")
    ts.add_parser("list", help="list teams", parents=common)
    tt = ts.add_parser("topup", help="add credit to a team", parents=common)
    tt.add_argument("name", help="the team's name")
    tt.add_argument("amount", help="credit to add, e.g. 20")
    t.set_defaults(run=teams)


def _ledger(args, create: bool = False):
    """The ledger of --db. Only ``keys create`` may create one: a mistyped --db is an error, never a new file.
    These commands take no lease and never settle anyone's holds."""
    from ..ledger import Ledger
    settings = settings_from(args)
    return Ledger(settings.db_target, create=create, busy_timeout=settings.db_busy_timeout)


def settings_of(args, *, key: bool) -> dict:
    """The settings flags that were given -> the ledger's setting names and values. Raises ConfigError."""
    out: dict = {}
    for name in ("rpm", "tpm", "max_parallel"):
        value = getattr(args, name)
        if value is not None:
            out[name] = None if value == NONE else _whole(value, "--" + name.replace("_", "-"))
    if args.allow_models is not None:
        out["models"] = args.allow_models
    if args.budget is not None:
        out["budget"] = None if args.budget == NONE else _money(args.budget)
    for name in ("period", "tz") + (("expires", "team") if key else ()):
        value = getattr(args, name)
        if value is not None:
            out[name] = None if value == NONE else value
    if key and args.admin is not None:
        out["admin"] = args.admin
    return out


def keys(args) -> int:
    from ..ledger.records import check_key_name
    # names, amounts and settings are checked before the ledger is opened, so a bad one never creates a file
    amount = _money(args.credit if args.keys_cmd == "create" else getattr(args, "amount", "0"))
    problem = check_key_name(args.name) if args.keys_cmd == "create" else None
    if problem:
        raise ConfigError(problem)
    settings = settings_of(args, key=True) if args.keys_cmd in ("create", "update") else {}
    ledger = _ledger(args, create=args.keys_cmd == "create")
    try:
        if args.keys_cmd == "create":
            raw = ledger.create_key(args.name, amount, **settings)
            print(f"created key '{args.name}' with credit {format_money(amount)}; it is shown only once:")
            print(raw)
        elif args.keys_cmd == "update":
            show(ledger.update_key(args.name, **settings))
        elif args.keys_cmd == "show":
            show(ledger.show_key(args.name))
        elif args.keys_cmd == "list":
            print(f"{'name':<24} {'balance':>14} {'held':>12}  {'team':<16} {'created':<27} revoked")
            for k in ledger.list_keys():
                print(f"{k['name']:<24} {format_money(k['balance']):>14} {format_money(k['held']):>12}  "
                      f"{k['team'] or '-':<16} {k['created_at']:<27} {k['revoked_at'] or '-'}")
        elif args.keys_cmd == "revoke":
            ledger.revoke(args.name)
            print(f"revoked key '{args.name}'")
        elif args.keys_cmd == "rotate":
            raw = ledger.rotate(args.name)
            print(f"rotated key '{args.name}'; the old secret no longer works; the new one is shown only once:")
            print(raw)
        elif args.keys_cmd == "topup":
            balance = ledger.topup(args.name, amount)
            print(f"key '{args.name}' balance: {format_money(balance)}")
    finally:
        ledger.close()
    return 0


def teams(args) -> int:
    credit = None
    if args.teams_cmd == "create" and args.credit is not None:
        credit = _money(args.credit)
    amount = _money(args.amount) if args.teams_cmd == "topup" else 0
    settings = settings_of(args, key=False) if args.teams_cmd in ("create", "update") else {}
    ledger = _ledger(args, create=args.teams_cmd == "create")
    try:
        if args.teams_cmd == "create":
            show(ledger.create_team(args.name, credit, **settings))
        elif args.teams_cmd == "update":
            show(ledger.update_team(args.name, **settings))
        elif args.teams_cmd == "show":
            show(ledger.show_team(args.name))
        elif args.teams_cmd == "list":
            print(f"{'name':<24} {'balance':>14} {'rpm':>8} {'tpm':>10} {'parallel':>8} {'budget':>12}  models")
            for t in ledger.list_teams():
                print(f"{t['name']:<24} {_credit(t['balance']):>14} {t['rpm'] or '-':>8} {t['tpm'] or '-':>10} "
                      f"{t['max_parallel'] or '-':>8} {_credit(t['budget']):>12}  {','.join(t['models'])}")
        elif args.teams_cmd == "topup":
            print(f"team '{args.name}' balance: {format_money(ledger.topup_team(args.name, amount))}")
    finally:
        ledger.close()
    return 0


def show(item: dict) -> None:
    """A key or team as `name: value` lines, money in credit."""
    for name, value in item.items():
        if name == "usage":
            for u, v in value.items():
                if u == "budget":
                    v = {**v, "amount": format_money(v["amount"]), "used": format_money(v["used"]),
                         "left": format_money(v["left"])}
                print(f"used.{u}: {json.dumps(v) if isinstance(v, dict) else v}")
            continue
        if name in ("balance", "held", "budget") and value is not None:
            value = format_money(value)
        if isinstance(value, list):
            value = ",".join(value) if value else "(none)"
        print(f"{name}: {'-' if value is None else value}")


def _credit(micro: int | None) -> str:
    return "-" if micro is None else format_money(micro)


def _whole(text: str, flag: str) -> int:
    if not text.isdigit():
        raise ConfigError(f"{flag}: a whole number, or 'none'")
    return int(text)


def _money(text: str) -> int:
    from ..ledger import MAX_BALANCE
    try:
        micro = parse_money(text)
    except ValueError as e:
        raise ConfigError(f"bad amount: {e}") from None
    except ArithmeticError:  # e.g. 1e999999999: beyond what Decimal holds
        raise ConfigError(f"bad amount: {text!r} is too large") from None
    if micro > MAX_BALANCE:
        raise ConfigError(f"bad amount: the amount may be at most {MAX_BALANCE // 1_000_000:,} credit")
    return micro
