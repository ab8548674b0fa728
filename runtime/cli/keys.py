"""``reverb keys`` (create, list, revoke, topup) and ``reverb usage``: the ledger from the command line."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from ..errors import ConfigError
from ..models.registry import format_money, parse_money
from .flags import settings_from


def add_parsers(sub, common) -> None:
    k = sub.add_parser("keys", help="manage API keys and credit", description="Manage API keys and their credit.")
    ks = k.add_subparsers(dest="keys_cmd", required=True, metavar="ACTION")
    kc = ks.add_parser("create", help="create a key; prints it once, as the last line", parents=common)
    kc.add_argument("name", help="the key's name, shown in usage and logs")
    kc.add_argument("--credit", default="0", help="starting credit, e.g. 5 or 0.25 (default 0)")
    ks.add_parser("list", help="list keys with balances and credit on hold", parents=common)
    kr = ks.add_parser("revoke", help="revoke a key", parents=common)
    kr.add_argument("name", help="the key's name")
    kt = ks.add_parser("topup", help="add credit to a key", parents=common)
    kt.add_argument("name", help="the key's name")
    kt.add_argument("amount", help="credit to add, e.g. 2.50")
    k.set_defaults(run=keys)

    u = sub.add_parser("usage", help="per-key, per-model totals from the ledger", parents=common)
    u.add_argument("--key", help="only this key name")
    u.add_argument("--since", help="ISO date/time, or a duration such as 1h, 7d")
    u.set_defaults(run=usage)


def _ledger(args, create: bool = False):
    """The ledger of --db. Only ``keys create`` may create one: a mistyped --db is an error, never a new file.
    These commands take no lease and never settle anyone's holds."""
    from ..ledger import Ledger
    settings = settings_from(args)
    return Ledger(settings.db_target, create=create, busy_timeout=settings.db_busy_timeout)


def keys(args) -> int:
    from ..ledger.records import check_key_name
    # names and amounts are checked before the ledger is opened, so a bad one never creates a file
    amount = _money(args.credit if args.keys_cmd == "create" else getattr(args, "amount", "0"))
    problem = check_key_name(args.name) if args.keys_cmd == "create" else None
    if problem:
        raise ConfigError(problem)
    ledger = _ledger(args, create=args.keys_cmd == "create")
    try:
        if args.keys_cmd == "create":
            credit = amount
            raw = ledger.create_key(args.name, credit)
            print(f"created key '{args.name}' with credit {format_money(credit)}; it is shown only once:")
            print(raw)
        elif args.keys_cmd == "list":
            print(f"{'name':<24} {'balance':>14} {'held':>12}  {'created':<27} revoked")
            for k in ledger.list_keys():
                print(f"{k['name']:<24} {format_money(k['balance']):>14} {format_money(k['held']):>12}  "
                      f"{k['created_at']:<27} {k['revoked_at'] or '-'}")
        elif args.keys_cmd == "revoke":
            ledger.revoke(args.name)
            print(f"revoked key '{args.name}'")
        elif args.keys_cmd == "topup":
            balance = ledger.topup(args.name, amount)
            print(f"key '{args.name}' balance: {format_money(balance)}")
    finally:
        ledger.close()
    return 0


def _money(text: str) -> int:
    from ..money import MAX_BALANCE, MICRO
    try:
        micro = parse_money(text)
    except ValueError as e:
        raise ConfigError(f"bad amount: {e}") from None
    except ArithmeticError:  # e.g. 1e999999999: beyond what Decimal holds
        raise ConfigError(f"bad amount: {text!r} is too large") from None
    if micro > MAX_BALANCE:
        raise ConfigError(f"bad amount: the amount may be at most {MAX_BALANCE // MICRO:,} credit")
    return micro


def parse_since(text: str | None) -> str | None:
    """'1h', '7d', '30m' or an ISO date/time -> the ISO UTC form the ledger stores."""
    if text is None:
        return None
    units = {"m": "minutes", "h": "hours", "d": "days"}
    if text[-1:] in units and text[:-1].isdigit():
        try:
            when = datetime.now(timezone.utc) - timedelta(**{units[text[-1]]: int(text[:-1])})
        except OverflowError:
            raise ConfigError(f"--since: {text!r} reaches before the year 1") from None
    else:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise ConfigError(f"--since: not a date or duration: {text!r}") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
    try:
        return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    except OverflowError:
        raise ConfigError(f"--since: {text!r} is out of range") from None


def usage(args) -> int:
    since = parse_since(args.since)
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
