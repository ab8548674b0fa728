"""A key's and a team's limits, checked and taken inside the transaction that places the credit hold.

The caller has locked the owner's row (an ``UPDATE`` of it: PostgreSQL's row lock; SQLite's BEGIN IMMEDIATE
serializes every write), so what is read here cannot change before the transaction commits, on any server of the
ledger. Each check raises before anything is written: a refused request changes no counter.

- credit: the owner's balance (a team without credit of its own has ``balance`` None);
- budget: what the calendar period's rows charged plus every open hold, plus this hold, within the budget;
- concurrency: open holds;
- requests and tokens per minute: a sliding window of the last 60 s over ``rate_events`` (one row per admitted
  request, its tokens reserved up front and lowered to the real use at settlement), never a fixed window.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import RETRY_BUSY, BudgetExceeded, InsufficientCredit, RateLimited
from ..money import format_money
from . import periods

WINDOW_MS = 60_000


@dataclass(frozen=True)
class Owner:
    """A key's or a team's settings as the transaction read them."""

    kind: str                 # "key" | "team": the column of holds / rate_events / requests that names it
    id: int
    name: str
    balance: int | None       # None: a team without credit of its own
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    budget: int | None = None
    period: str | None = None
    tz: str | None = None

    @property
    def column(self) -> str:
        return "key_id" if self.kind == "key" else "team_id"

    @property
    def rated(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    def label(self) -> str:
        return f"{self.kind} '{self.name}'"


money = format_money     # an amount of credit as text, in refusals


def check(db, owner: Owner, now_ms: int, amount: int, tokens: int) -> dict:
    """Raise if this request does not fit ``owner``'s credit, budget or limits; else return its rate-limit
    header values (empty when it has no rate limit)."""
    if owner.balance is not None and owner.balance < amount:
        raise InsufficientCredit(f"this request would hold {money(amount)} credit but the {owner.label()} has "
                                 f"{money(owner.balance)} left", needed=amount, left=owner.balance)
    if owner.budget is not None:
        check_budget(db, owner, now_ms, amount)
    if owner.max_parallel is not None:
        running = db.execute(f"SELECT COUNT(*) FROM holds WHERE {owner.column} = ?", (owner.id,)).fetchone()[0]
        if running >= owner.max_parallel:
            raise RateLimited(f"the {owner.label()} may run {owner.max_parallel} request(s) at once",
                              retry_after=RETRY_BUSY)   # when one ends is unknown: a limit reached now
    if not owner.rated:
        return {}
    events = db.execute(f"SELECT at_ms, tokens FROM rate_events WHERE {owner.column} = ? AND at_ms > ? "
                        f"ORDER BY at_ms", (owner.id, now_ms - WINDOW_MS)).fetchall()
    events = [(int(a), int(t)) for a, t in events]
    waits, reasons = [], []
    if owner.rpm is not None and len(events) + 1 > owner.rpm:
        # the (len - rpm + 1)-th oldest request must leave the window first
        waits.append(_leaves(events[len(events) - owner.rpm][0], now_ms) if owner.rpm > 0 else None)
        reasons.append(f"{owner.rpm} requests per minute")
    if owner.tpm is not None:
        used = sum(t for _, t in events)
        free = max(0, owner.tpm - used)
        if tokens > owner.tpm:
            waits.append(None)
            reasons.append(f"{owner.tpm} tokens per minute (this request alone reserves {tokens}: "
                           f"prompt + max_tokens; a smaller max_tokens would pass)")
        elif used + tokens > owner.tpm:
            for at, t in events:
                used -= t
                if used + tokens <= owner.tpm:
                    waits.append(_leaves(at, now_ms))
                    break
            reasons.append(f"{owner.tpm} tokens per minute ({tokens} asked, {free} free now)")
    if reasons:
        retry = None if any(w is None for w in waits) else max(waits)
        raise RateLimited(f"rate limit of the {owner.label()} reached: " + "; ".join(reasons),
                          retry_after=retry, limits=headers(owner, events, now_ms, 0, 0),
                          type="requests" if any("requests" in r for r in reasons) else "tokens")
    return headers(owner, events, now_ms, 1, tokens)


def used_before(events) -> int:
    return sum(t for _, t in events)


def _leaves(at_ms: int, now_ms: int) -> float:
    return max(0, at_ms + WINDOW_MS - now_ms) / 1000


def check_budget(db, owner: Owner, now_ms: int, amount: int) -> None:
    """Raise BudgetExceeded if holding ``amount`` more would pass ``owner``'s period budget."""
    period = owner.period or "month"
    start, end = periods.bounds(now_ms, period, owner.tz)
    spent = db.execute(f"SELECT (SELECT COALESCE(SUM(price), 0) FROM requests WHERE {owner.column} = ? AND "
                       f"created_at >= ?), (SELECT COALESCE(SUM(amount), 0) FROM holds WHERE {owner.column} = ?)",
                       (owner.id, periods.iso(start), owner.id)).fetchone()
    used = int(spent[0]) + int(spent[1])
    left = max(0, owner.budget - used)
    if used + amount > owner.budget:
        raise BudgetExceeded(f"this request would hold {money(amount)} credit but the {owner.label()}'s {period} "
                             f"budget of {money(owner.budget)} has {money(left)} left (it resets at "
                             f"{periods.iso(end)[:19]}Z)", needed=amount, left=left)


def headers(owner: Owner, events, now_ms: int, plus_requests: int, plus_tokens: int) -> dict:
    """OpenAI's x-ratelimit-* values for one owner: limit, remaining after this request, and reset (seconds until
    the oldest request in the window leaves it, when capacity next grows)."""
    out: dict = {}
    reset = _leaves(events[0][0], now_ms) if events else (WINDOW_MS / 1000 if plus_requests else 0.0)
    if owner.rpm is not None:
        out["requests"] = (owner.rpm, max(0, owner.rpm - len(events) - plus_requests), reset)
    if owner.tpm is not None:
        out["tokens"] = (owner.tpm, max(0, owner.tpm - used_before(events) - plus_tokens), reset)
    return out


def tighter(a: dict, b: dict) -> dict:
    """Per dimension, the owner with less remaining (key vs team: the tighter one wins)."""
    out = dict(a)
    for dim, value in b.items():
        if dim not in out or value[1] < out[dim][1]:
            out[dim] = value
    return out


def status(db, owner: Owner, now_ms: int) -> dict:
    """What ``owner`` has used now: in-flight requests, the window's requests and tokens, the period's spend."""
    out: dict = {"running": int(db.execute(f"SELECT COUNT(*) FROM holds WHERE {owner.column} = ?",
                                           (owner.id,)).fetchone()[0])}
    rows = db.execute(f"SELECT COUNT(*), COALESCE(SUM(tokens), 0) FROM rate_events WHERE {owner.column} = ? "
                      f"AND at_ms > ?", (owner.id, now_ms - WINDOW_MS)).fetchone()
    out["requests_last_minute"], out["tokens_last_minute"] = int(rows[0]), int(rows[1])
    if owner.budget is not None:
        period = owner.period or "month"
        start, end = periods.bounds(now_ms, period, owner.tz)
        spent = db.execute(f"SELECT (SELECT COALESCE(SUM(price), 0) FROM requests WHERE {owner.column} = ? AND "
                           f"created_at >= ?), (SELECT COALESCE(SUM(amount), 0) FROM holds WHERE "
                           f"{owner.column} = ?)", (owner.id, periods.iso(start), owner.id)).fetchone()
        used = int(spent[0]) + int(spent[1])
        out["budget"] = {"amount": owner.budget, "period": period, "time_zone": owner.tz or "UTC",
                         "used": used, "left": max(0, owner.budget - used),
                         "period_start": periods.iso(start), "resets_at": periods.iso(end)}
    return out
