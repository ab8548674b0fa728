"""``reverb usage``: totals from the ledger, per key and model by default, or grouped by any of day, hour, key,
model, team and status (``--group-by day,key``), as a table, CSV or JSON."""

from __future__ import annotations

import csv
import json
import sys
from datetime import datetime, timedelta, timezone

from ..errors import ConfigError
from ..models.registry import format_money
from .keys import _ledger

GROUPS = ("day", "hour", "key", "model", "team", "status")


def add_parsers(sub, common) -> None:
    u = sub.add_parser("usage", help="usage totals from the ledger, grouped and exported", parents=common)
    u.add_argument("--key", help="only this key name")
    u.add_argument("--since", help="ISO date/time, or a duration such as 1h, 7d")
    u.add_argument("--until", help="ISO date/time (exclusive), or a duration ago such as 1d")
    u.add_argument("--group-by", help=f"comma-separated, any of {', '.join(GROUPS)} (default key,model)")
    u.add_argument("--format", default="table", choices=("table", "csv", "json"),
                   help="table (default), csv or json (money in credit, as decimal text)")
    u.set_defaults(run=usage)


def parse_since(text: str | None, flag: str = "--since") -> str | None:
    """'1h', '7d', '30m' or an ISO date/time -> the ISO UTC form the ledger stores."""
    if text is None:
        return None
    units = {"m": "minutes", "h": "hours", "d": "days"}
    if text[-1:] in units and text[:-1].isdigit():
        try:
            when = datetime.now(timezone.utc) - timedelta(**{units[text[-1]]: int(text[:-1])})
        except OverflowError:
            raise ConfigError(f"{flag}: {text!r} reaches before the year 1") from None
    else:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise ConfigError(f"{flag}: not a date or duration: {text!r}") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
    try:
        return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    except OverflowError:
        raise ConfigError(f"{flag}: {text!r} is out of range") from None


def usage(args) -> int:
    since, until = parse_since(args.since), parse_since(args.until, "--until")
    group_by = [g.strip() for g in (args.group_by or "").split(",") if g.strip()]
    bad = [g for g in group_by if g not in GROUPS]
    if bad:
        raise ConfigError(f"--group-by: unknown group {bad[0][:32]!r} (use {', '.join(GROUPS)})")
    if not group_by and args.format == "table" and until is None:
        return _classic(args, since)
    group_by = group_by or ["key", "model"]
    ledger = _ledger(args)
    try:
        rows = ledger.usage_by(group_by, since, until, key=args.key)
    finally:
        ledger.close()
    for r in rows:
        r["price"] = format_money(r["price"])
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=2)
        print()
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=[*group_by, "requests", "completed", "cancelled", "failed",
                                                        "rejected", "prompt_tokens", "completion_tokens", "price"])
        writer.writeheader()
        writer.writerows(rows)
    else:
        cols = [*group_by, "requests", "completed", "rejected", "prompt_tokens", "completion_tokens", "price"]
        widths = [max([len(c)] + [len(str(r[c])) for r in rows]) for c in cols]
        print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
        for r in rows:
            print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths, strict=True)))
    return 0


def _classic(args, since: str | None) -> int:
    """The default table: per key and model with every status, then refusals without a key."""
    ledger = _ledger(args)
    try:
        rows = ledger.usage(key=args.key, since=since)
        refusals = ledger.refusals(since)[:10] if args.key is None else []
    finally:
        ledger.close()
    print(f"{'key':<20} {'model':<16} {'requests':>8} {'ok':>6} {'cancel':>6} {'failed':>6} {'reject':>6} "
          f"{'prompt_tok':>10} {'compl_tok':>10} {'price':>12}")
    for r in rows:
        print(f"{r['key']:<20} {r['model']:<16} {r['requests']:>8} {r['completed']:>6} {r['cancelled']:>6} "
              f"{r['failed']:>6} {r['rejected']:>6} {r['prompt_tokens']:>10} {r['completion_tokens']:>10} "
              f"{format_money(r['price']):>12}")
    if refusals:
        print("\nrefused without a key (counted per client address, route and code; '-' above):")
        for r in refusals:
            print(f"  {r['client']:<40} {r['endpoint']:<18} {r['error_code']:<22} {r['n']:>8}")
    return 0
