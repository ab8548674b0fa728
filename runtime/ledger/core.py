"""The ledger: API keys (SHA-256 digests only), credit, holds and one usage row per request, on either engine.

Money is integer micro-units. Before a request runs its worst case is reserved with one conditional
``UPDATE keys SET balance = balance - hold WHERE balance >= hold`` inside the transaction that writes the hold, so
concurrent requests, on one server or several, can never overspend. When the job ends for any reason the hold is
settled: deleted (exactly once: ``DELETE ... RETURNING``), the real charge (never above the hold) kept and the rest
refunded, in the transaction that writes the usage row. The invariant, checked by the tests after every run:

    sum(grants) == sum(balances) + sum(open holds) + sum(charges), and no balance below zero.

The same transaction checks and takes the key's and its team's limits, budget and the team's own credit
(``limits.py``; a team's money obeys the same invariant over ``team_grants``). Keys and teams are managed in
``manage.py``, grouped usage and ``/v1/me`` are ``reports.py``.

Each hold belongs to the server instance that made it; ``leases.py`` holds the crash rule. The SQL here is
written once, with ``?`` placeholders, for both engines (``sqlite.py``, ``postgres.py``); ``open_engine`` picks
one from ``--db``: a file path, or a ``postgresql://`` URL. Keys given on the command line (``--api-key``) are not
stored; they act as unlimited dev keys whose requests are logged with ``key_id`` NULL.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from pathlib import Path
from typing import NamedTuple

from ..errors import AuthenticationError, ConfigError, InsufficientCredit, LedgerError
from ..money import MAX_BALANCE
from ..request import Account
from . import leases, limits
from .manage import _TEAM_SELECT, Management, digest, key_owner, models_of, team_owner
from .periods import stamp
from .records import RequestRecord, insert_request, now, printable, settle_window
from .reports import Reports
from .schema import MIGRATIONS


class Reservation(NamedTuple):
    """What a hold returned: the rate-limit header values, and the lease epoch the hold belongs to (None when
    nothing is held: an unlimited key)."""

    limits: dict
    epoch: int | None

log = logging.getLogger("reverb.ledger")

DETAIL_ROWS_PER_MINUTE = 5    # per client, route and code: refusals without a key beyond this are only counted
CLIENT_CHARS = 64
MODEL_EVENT_CHARS = 256   # an hf.co/owner/repo:QUANT name is longer than a catalogue name
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
POSTGRES_SCHEMES = ("postgresql", "postgres")


def open_engine(target: str | Path, *, create: bool = True, busy_timeout: float = 10.0, max_mb: float = 0):
    """The engine for ``--db``: PostgreSQL for a ``postgresql://`` URL, SQLite for a path. Raises ConfigError for
    any other URL scheme, and (with ``create=False``) for a SQLite file that does not exist."""
    text = str(target)
    match = _URL.match(text)
    if match is None:
        from .sqlite import SQLiteEngine
        return SQLiteEngine(Path(text), create=create, busy_timeout=busy_timeout, max_mb=max_mb)
    if match.group(1).lower() not in POSTGRES_SCHEMES:
        raise ConfigError(f"unsupported ledger URL scheme '{match.group(1)}': use a file path (SQLite) or "
                          f"postgresql://user@host:port/dbname")
    if max_mb:
        raise ConfigError("--db-max-mb caps a SQLite ledger file; it does not apply to PostgreSQL")
    from .postgres import PostgresEngine
    return PostgresEngine(text, busy_timeout=busy_timeout)


class Ledger(Management, Reports):
    """The ledger on one engine. Every method is synchronous and thread-safe; the server calls them off the
    event loop. ``create=False``: a read-only caller, which never creates a SQLite file or directory.
    ``clock``: None (the database's clock) or a function returning milliseconds (tests' fake clock)."""

    clock = None

    def __init__(self, target: str | Path, dev_keys: tuple[str, ...] = (), busy_timeout: float = 10.0,
                 max_mb: float = 0, create: bool = True):
        self.engine = open_engine(target, create=create, busy_timeout=busy_timeout, max_mb=max_mb)
        try:
            self.engine.migrate(MIGRATIONS)
        except BaseException:
            self.engine.close()
            raise
        self._dev = [(digest(k), "env:" + digest(k).hex()[:8]) for k in dev_keys]
        self.lease = leases.Lease(self.engine)
        self._skipped_refusals = 0

    def _now_ms(self, db) -> int:
        """Now, in milliseconds, on the database's clock (the same for every server of the ledger)."""
        if self.clock is not None:
            return int(self.clock())
        return int(db.execute(f"SELECT {self.engine.now_ms}").fetchone()[0])

    @property
    def schema_version(self) -> int:
        return self.engine.version()

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- keys (creating and managing them: manage.py) ------------------------------------------------------

    def authenticate(self, raw_key: str) -> Account | None:
        """The account for a raw key, or None. Compared as SHA-256 digests in constant time."""
        d = digest(raw_key)
        found = None
        for dev_digest, name in self._dev:  # check all, so timing does not tell which matched
            if hmac.compare_digest(dev_digest, d):
                found = Account(name=name, key_id=None, unlimited=True)
        if found:
            return found
        rows = self.engine.read("SELECT k.id, k.name, k.digest, k.model_scope, k.expires_at, k.admin, t.name, "
                                "t.models, COALESCE(k.rate_limit_rpm, k.tpm, t.rpm, t.tpm) FROM keys k "
                                "LEFT JOIN teams t ON t.id = k.team_id WHERE k.digest = ? AND k.revoked_at IS NULL",
                                (d,))
        for key_id, name, stored, scope, expires, admin, team, team_models, rated in rows:
            if hmac.compare_digest(bytes(stored), d):
                if expires is not None and expires <= now():
                    raise AuthenticationError(f"This API key expired at {expires[:19]}Z")
                allow = (models_of(scope),) + ((models_of(team_models),) if team is not None else ())
                return Account(name=name, key_id=int(key_id), admin=bool(admin), allowlists=allow, team=team,
                               rated=rated is not None)
        return None

    def window(self, key_id: int) -> dict:
        """The rate-limit header values of a key now (its or its team's, the tighter), taking nothing: for
        responses to requests that reserved nothing (/v1/models, /v1/me, refusals before the hold)."""
        read = self.engine.read
        now_ms = int(self.clock()) if self.clock else int(read(f"SELECT {self.engine.now_ms}")[0][0])
        rows = read(f"SELECT {_KEY_RETURNING.replace('balance + ?', 'balance')} FROM keys WHERE id = ?", (key_id,))
        if not rows:
            return {}
        owners = [key_owner(rows[0])]
        if rows[0][15] is not None:
            owners.append(team_owner(read(f"SELECT {_TEAM_SELECT} FROM teams WHERE id = ?", (rows[0][15],))[0]))
        out: dict = {}
        for owner in owners:
            if owner.rated:
                events = read(f"SELECT at_ms, tokens FROM rate_events WHERE {owner.column} = ? AND at_ms > ? "
                              f"ORDER BY at_ms", (owner.id, now_ms - limits.WINDOW_MS))
                out = limits.tighter(out, limits.headers(owner, [(int(a), int(t)) for a, t in events], now_ms,
                                                         0, 0))
        return out

    # -- money --------------------------------------------------------------------------------------------

    def reserve(self, account: Account, request_id: str, amount: int, model: str, endpoint: str,
                prompt_tokens: int = 0, prices: tuple[int, int] = (0, 0), tokens: int | None = None) -> Reservation:
        """Hold ``amount`` of the account's credit (and its team's) for this server's instance, and take the
        request's place in every limit of the key and its team (``tokens``: prompt + max_tokens, for tokens per
        minute; default ``prompt_tokens``). Returns the rate-limit header values and the lease epoch the hold
        belongs to (``Reservation``). Raises InsufficientCredit,
        BudgetExceeded, RateLimited or AuthenticationError without changing anything, LedgerError when this
        process holds no live lease."""
        if account.unlimited:
            return Reservation({}, None)
        if amount > MAX_BALANCE:
            raise InsufficientCredit("not enough credit for this request")
        tokens = prompt_tokens if tokens is None else tokens
        self.lease.require()
        started = time.monotonic()

        def tx(db):
            # The conditional debit takes the key's row lock (then the team's: always in this order), so the
            # checks below are exact; any refusal raises and rolls the debit back.
            row = db.execute(f"UPDATE keys SET balance = balance - ? WHERE id = ? AND balance >= ? "
                             f"RETURNING {_KEY_RETURNING}", (amount, account.key_id, amount, amount)).fetchone()
            if row is None:
                _refuse_key(db, account.key_id, amount, self._now_ms(db))
            if row[4] is not None:
                raise AuthenticationError("This API key has been revoked")
            now_ms = self._now_ms(db) if _timed(row) else 0
            if row[12] is not None and row[12] <= stamp(now_ms):
                raise AuthenticationError(f"This API key expired at {row[12][:19]}Z")
            key = key_owner(row)
            rates = limits.check(db, key, now_ms, amount, tokens)
            team, team_held = None, 0
            if row[15] is not None:
                team_row = db.execute(f"UPDATE teams SET balance = balance - ? WHERE id = ? AND (balance IS NULL "
                                      f"OR balance >= ?) RETURNING {_TEAM_RETURNING}",
                                      (amount, row[15], amount, amount)).fetchone()
                if team_row is None:   # the team's own credit is short
                    team_row = db.execute(f"SELECT {_TEAM_SELECT} FROM teams WHERE id = ?", (row[15],)).fetchone()
                team = team_owner(team_row)
                now_ms = now_ms or self._now_ms(db)
                rates = limits.tighter(rates, limits.check(db, team, now_ms, amount, tokens))
                team_held = amount if team.balance is not None else 0
            lost = leases.insert_hold(self.lease, db, request_id, account.key_id, amount, model, endpoint,
                               prompt_tokens, prices, now(), team.id if team else None, team_held)
            if key.rated or (team is not None and team.rated):
                db.execute("DELETE FROM rate_events WHERE key_id = ? AND at_ms <= ?",
                           (account.key_id, now_ms - limits.WINDOW_MS))
                db.execute("INSERT INTO rate_events (request_id, key_id, team_id, at_ms, tokens) "
                           "VALUES (?, ?, ?, ?, ?)", (request_id, account.key_id, team.id if team else None,
                                                      now_ms, tokens))
            return rates, lost
        rates, lost = self.engine.write(tx)
        self.lease.renewed(started, lost)
        return Reservation(rates, self.lease.epoch)

    def raise_hold(self, account: Account, request_id: str, amount: int, prompt_tokens: int) -> None:
        """Add ``amount`` to an open hold (its worst case once counted), checked like a hold against the key's and
        team's credit and budget. Raises InsufficientCredit or BudgetExceeded without changing anything, LedgerError."""
        amount = max(0, amount)
        if account.unlimited:
            return
        if amount > MAX_BALANCE:
            raise InsufficientCredit("not enough credit for this request")
        self.lease.require()

        def tx(db):  # the key's debit locks its row, then the team's: the order reserve takes
            team_extra = 0
            if amount:
                row = db.execute(f"UPDATE keys SET balance = balance - ? WHERE id = ? AND balance >= ? "
                                 f"AND revoked_at IS NULL RETURNING {_KEY_RETURNING}",
                                 (amount, account.key_id, amount, amount)).fetchone()
                if row is None:
                    raise InsufficientCredit("not enough credit for this request")
                now_ms, key = self._now_ms(db), key_owner(row)
                if key.budget is not None:
                    limits.check_budget(db, key, now_ms, amount)
                hold = db.execute("SELECT team_id FROM holds WHERE request_id = ?", (request_id,)).fetchone()
                if hold is not None and hold[0] is not None:
                    team_row = db.execute(f"UPDATE teams SET balance = balance - ? WHERE id = ? AND (balance IS NULL "
                                          f"OR balance >= ?) RETURNING {_TEAM_RETURNING}", (amount, hold[0], amount,
                                                                                            amount)).fetchone()
                    if team_row is None:
                        raise InsufficientCredit("not enough team credit for this request")
                    team = team_owner(team_row)
                    if team.budget is not None:
                        limits.check_budget(db, team, now_ms, amount)
                    team_extra = amount if team.balance is not None else 0
            cur = db.execute("UPDATE holds SET amount = amount + ?, team_held = team_held + ?, prompt_tokens = ? "
                             "WHERE request_id = ?", (amount, team_extra, prompt_tokens, request_id))
            if cur.rowcount != 1:
                raise LedgerError("The ledger could not record this request")
        self.engine.write(tx)

    def progress(self, request_id: str, delivered_tokens: int) -> None:
        """Raise a stream's delivered-token high-water mark (what a sweeper charges if this server dies)."""
        self.engine.write(lambda db: db.execute(
            "UPDATE holds SET delivered_tokens = ? WHERE request_id = ? AND delivered_tokens < ?",
            (delivered_tokens, request_id, delivered_tokens)))

    def settle(self, account: Account, record: RequestRecord, charge: int) -> int:
        """Close the request's hold: keep ``charge`` (capped at the hold), refund the rest, write its row.

        Returns the amount charged. Raises LedgerError when it cannot be recorded (the hold then stays open until
        it is settled again or its instance's lease expires), or when the hold is no longer open (a sweeper
        settled it after this server's lease expired).
        """
        def tx(db):
            kept, team_id, team_price = charge, None, 0
            created = stamp(self._now_ms(db))
            if not account.unlimited:
                rows = db.execute("DELETE FROM holds WHERE request_id = ? RETURNING amount, team_id, team_held",
                                  (record.request_id,)).fetchall()
                if not rows:
                    log.error("the hold of %s was already settled (this server's lease had expired)",
                              record.request_id)
                    raise LedgerError("The ledger could not record this request")
                held, team_id, team_held = int(rows[0][0]), rows[0][1], int(rows[0][2])
                kept = max(0, min(charge, held))
                if held - kept:
                    db.execute("UPDATE keys SET balance = balance + ? WHERE id = ?", (held - kept, account.key_id))
                team_price = min(kept, team_held)
                if team_held - team_price:
                    db.execute("UPDATE teams SET balance = balance + ? WHERE id = ?", (team_held - team_price,
                                                                                       team_id))
                settle_window(db, record.request_id, record)
            insert_request(db, account, record, kept, team_id, team_price, created)
            return kept
        return self.engine.write(tx)

    def hold_open(self, request_id: str) -> bool:
        return bool(self.engine.read("SELECT 1 FROM holds WHERE request_id = ?", (request_id,)))

    def log_rejected(self, account: Account | None, record: RequestRecord, client: str = "") -> bool:
        """A request refused before it ran: no money moves. Refusals without a key are counted per client
        address, route, code and minute, with a row of their own only for the first few; no refusal is written
        once a capped file is nearly full, so settlements keep their space. Returns whether a row was written."""
        client = printable(client[:CLIENT_CHARS]) or "-"

        def tx(db):
            if not self.engine.room_for_refusals(db):
                return False
            if account is None:
                n = db.execute(
                    "INSERT INTO refusals (minute, client, endpoint, error_code, n) VALUES (?, ?, ?, ?, 1) "
                    "ON CONFLICT (minute, client, endpoint, error_code) DO UPDATE SET n = refusals.n + 1 "
                    "RETURNING n", (now()[:16], client, record.endpoint, record.error_code or "-")).fetchone()[0]
                if n > DETAIL_ROWS_PER_MINUTE:
                    return False
            insert_request(db, account, record, 0)
            return True
        written = self.engine.write(tx)
        if not written and account is not None:
            self._skipped_refusals += 1
            if self._skipped_refusals % 1000 == 1:
                log.warning("the ledger is nearly full (--db-max-mb): refusals are no longer recorded (%d so far)",
                            self._skipped_refusals)
        return written

    # -- models ------------------------------------------------------------------------------------------

    def model_event(self, model: str, event: str, seconds: float | None = None, memory: int = 0,
                    reason: str | None = None) -> None:
        """Record a model load ("loaded", "failed") or "unloaded", with this server's instance."""
        self.engine.write(lambda db: db.execute(
            "INSERT INTO model_events (instance_id, model, event, seconds, memory_bytes, reason, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (self.lease.instance_id, printable(model[:MODEL_EVENT_CHARS]), event, seconds, int(memory),
             None if reason is None else printable(reason[:200]), now())))

    def model_events(self, since: str | None = None) -> list[dict]:
        rows = self.engine.read("SELECT instance_id, model, event, seconds, memory_bytes, reason, created_at "
                                "FROM model_events WHERE created_at >= ? ORDER BY id", (since or "",))
        cols = ("instance_id", "model", "event", "seconds", "memory_bytes", "reason", "created_at")
        return [dict(zip(cols, r, strict=True)) for r in rows]

    # -- reports ------------------------------------------------------------------------------------------

    def usage(self, key: str | None = None, since: str | None = None) -> list[dict]:
        """Per-key, per-model totals, optionally for one key name and from an ISO time on. Refusals without a
        key appear as key '-', model '-', counted from the per-client tallies."""
        sql = ("SELECT key_name, COALESCE(model, '-'), COUNT(*), "
               + ", ".join(f"SUM(CASE WHEN status = '{s}' THEN 1 ELSE 0 END)"
                           for s in ("completed", "cancelled", "failed", "rejected"))
               + ", SUM(prompt_tokens), SUM(completion_tokens), SUM(price) FROM requests WHERE key_name IS NOT NULL")
        args: list = []
        if key is not None:
            sql += " AND key_name = ?"
            args.append(key)
        if since is not None:
            sql += " AND created_at >= ?"
            args.append(since)
        sql += " GROUP BY key_name, COALESCE(model, '-') ORDER BY 1, 2"
        cols = ("key", "model", "requests", "completed", "cancelled", "failed", "rejected",
                "prompt_tokens", "completion_tokens", "price")
        out = [dict(zip(cols, (r[0], r[1], *(int(v or 0) for v in r[2:])), strict=True))
               for r in self.engine.read(sql, args)]
        if key is None:
            n = sum(r["n"] for r in self.refusals(since))
            if n:
                out.insert(0, dict(zip(cols, ("-", "-", n, 0, 0, 0, n, 0, 0, 0), strict=True)))
        return out

    def refusals(self, since: str | None = None) -> list[dict]:
        """Refusals without a key per client address, route and code (most first)."""
        rows = self.engine.read("SELECT client, endpoint, error_code, SUM(n) FROM refusals WHERE minute >= ? "
                                "GROUP BY client, endpoint, error_code ORDER BY 4 DESC, 1, 2, 3",
                                ((since or "")[:16],))
        return [dict(client=r[0], endpoint=r[1], error_code=r[2], n=int(r[3])) for r in rows]

    def request(self, request_id: str) -> dict | None:
        rows = self.engine.read(
            "SELECT request_id, key_name, model, endpoint, prompt_tokens, completion_tokens, price, "
            "status, error_code, latency_ms, body FROM requests WHERE request_id = ?", (request_id,))
        cols = ("request_id", "key", "model", "endpoint", "prompt_tokens", "completion_tokens", "price",
                "status", "error_code", "latency_ms", "body")
        return dict(zip(cols, rows[0], strict=True)) if rows else None

    def holds(self) -> list[dict]:
        """Open holds with their instance and delivered-token mark (for operators and tests)."""
        rows = self.engine.read("SELECT request_id, key_id, amount, instance_id, prompt_tokens, delivered_tokens "
                                "FROM holds ORDER BY created_at")
        cols = ("request_id", "key_id", "amount", "instance_id", "prompt_tokens", "delivered_tokens")
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def invariant(self) -> dict:
        """The money totals; ``ok`` is True when grants == balances + holds + charges and no balance < 0, for
        keys and (inside ``ok``) for teams' own credit alike."""
        g, b, h, c, neg, tg, tb, th, tc = (int(v) for v in self.engine.read(
            "SELECT (SELECT COALESCE(SUM(amount), 0) FROM grants), (SELECT COALESCE(SUM(balance), 0) FROM keys), "
            "(SELECT COALESCE(SUM(amount), 0) FROM holds), "
            "(SELECT COALESCE(SUM(price), 0) FROM requests WHERE key_id IS NOT NULL), "
            "(SELECT COUNT(*) FROM keys WHERE balance < 0) + (SELECT COUNT(*) FROM teams WHERE balance < 0), "
            "(SELECT COALESCE(SUM(amount), 0) FROM team_grants), (SELECT COALESCE(SUM(balance), 0) FROM teams), "
            "(SELECT COALESCE(SUM(team_held), 0) FROM holds), (SELECT COALESCE(SUM(team_price), 0) FROM requests)"
        )[0])
        return dict(grants=g, balances=b, holds=h, charges=c, ok=(g == b + h + c and neg == 0 and
                                                                 tg == tb + th + tc))


# What the debit returns: a key's row in _KEY_SELECT order (no team name; the balance before the debit).
_KEY_RETURNING = ("id, name, balance + ?, created_at, revoked_at, rate_limit_rpm, tpm, max_parallel, model_scope, "
                  "budget, period, tz, expires_at, NULL, admin, team_id, 0")
_TEAM_RETURNING = ("id, name, CASE WHEN balance IS NULL THEN NULL ELSE balance + ? END, created_at, rpm, tpm, "
                   "max_parallel, models, budget, period, tz")


def _timed(row) -> bool:
    """Whether a key's checks need the clock: an expiry, a budget, a rate limit (or a team's, checked later)."""
    return any(row[i] is not None for i in (5, 6, 9, 12))


def _refuse_key(db, key_id: int, amount: int, now_ms: int) -> None:
    """The debit found no row: say why (revoked, expired, or short of credit). Always raises."""
    row = db.execute("SELECT balance, revoked_at, expires_at, name FROM keys WHERE id = ?", (key_id,)).fetchone()
    if row is None or row[1] is not None:
        raise AuthenticationError("This API key has been revoked")
    if row[2] is not None and row[2] <= stamp(now_ms):
        raise AuthenticationError(f"This API key expired at {row[2][:19]}Z")
    raise InsufficientCredit(f"this request would hold {limits.money(amount)} credit but the key '{row[3]}' has "
                             f"{limits.money(int(row[0]))} left", needed=amount, left=int(row[0]))

