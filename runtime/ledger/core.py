"""The ledger: API keys (SHA-256 digests only), credit, holds and one usage row per request, on either engine.

Money is integer micro-units. Before a request runs its worst case is reserved with one conditional
``UPDATE keys SET balance = balance - hold WHERE balance >= hold`` inside the transaction that writes the hold, so
concurrent requests, on one server or several, can never overspend. When the job ends for any reason the hold is
settled: deleted (exactly once: ``DELETE ... RETURNING``), the real charge (never above the hold) kept and the rest
refunded, in the transaction that writes the usage row. The invariant, checked by the tests after every run:

    sum(grants) == sum(balances) + sum(open holds) + sum(charges), and no balance below zero.

Each hold belongs to the server instance that made it; ``leases.py`` holds the crash rule. The SQL here is
written once, with ``?`` placeholders, for both engines (``sqlite.py``, ``postgres.py``); ``open_engine`` picks
one from ``--db``: a file path, or a ``postgresql://`` URL. Keys given on the command line (``--api-key``) are not
stored; they act as unlimited dev keys whose requests are logged with ``key_id`` NULL.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from datetime import datetime, timezone
from pathlib import Path

from ..errors import ConfigError, InsufficientCredit, LedgerError
from ..request import Account
from . import leases
from .records import RequestRecord, check_key_name, printable
from .schema import MIGRATIONS

log = logging.getLogger("reverb.ledger")

MAX_BALANCE = 10**15          # micro-units (one billion credits): far from 64-bit overflow on either engine
DETAIL_ROWS_PER_MINUTE = 5    # per client, route and code: refusals without a key beyond this are only counted
CLIENT_CHARS = 64
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
POSTGRES_SCHEMES = ("postgresql", "postgres")


def digest(raw_key: str) -> bytes:
    return hashlib.sha256(raw_key.encode("utf-8", "surrogatepass")).digest()


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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


class Ledger:
    """The ledger on one engine. Every method is synchronous and thread-safe; the server calls them off the
    event loop. ``create=False``: a read-only caller, which never creates a SQLite file or directory."""

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

    @property
    def schema_version(self) -> int:
        return self.engine.version()

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- keys ---------------------------------------------------------------------------------------------

    def create_key(self, name: str, credit: int = 0) -> str:
        """Create a key and return the raw key (shown once, never stored). Raises ConfigError on a bad or taken
        name or an amount out of range."""
        problem = check_key_name(name)
        if problem:
            raise ConfigError(problem)
        _check_amount(credit, allow_zero=True)
        raw = "rk-" + secrets.token_urlsafe(32)

        def tx(db):
            if db.execute("SELECT 1 FROM keys WHERE name = ?", (name,)).fetchone():
                raise ConfigError(f"a key named {name!r} already exists")
            key_id = db.execute("INSERT INTO keys (name, digest, balance, created_at) VALUES (?, ?, 0, ?) "
                                "RETURNING id", (name, digest(raw), now())).fetchone()[0]
            if credit > 0:
                _grant(db, key_id, credit)
        self.engine.write(tx)
        return raw

    def topup(self, name: str, amount: int) -> int:
        """Add credit; returns the new balance. Raises ConfigError for an unknown key, a bad amount, or a
        balance that would pass MAX_BALANCE."""
        _check_amount(amount, allow_zero=False)

        def tx(db):
            row = db.execute("SELECT id, balance FROM keys WHERE name = ?", (name,)).fetchone()
            if not row:
                raise ConfigError(f"no key named {printable(name)!r}")
            if row[1] + amount > MAX_BALANCE:
                raise ConfigError(f"that would take the balance past the most a key may hold "
                                  f"({MAX_BALANCE // 1_000_000:,} credit)")
            _grant(db, row[0], amount)
            return db.execute("SELECT balance FROM keys WHERE id = ?", (row[0],)).fetchone()[0]
        return self.engine.write(tx)

    def revoke(self, name: str) -> None:
        def tx(db):
            cur = db.execute("UPDATE keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (now(), name))
            if cur.rowcount == 0:
                raise ConfigError(f"no active key named {printable(name)!r}")
        self.engine.write(tx)

    def list_keys(self) -> list[dict]:
        rows = self.engine.read(
            "SELECT k.name, k.balance, k.created_at, k.revoked_at, COALESCE(SUM(h.amount), 0) "
            "FROM keys k LEFT JOIN holds h ON h.key_id = k.id "
            "GROUP BY k.id, k.name, k.balance, k.created_at, k.revoked_at ORDER BY k.id")
        return [dict(name=r[0], balance=int(r[1]), created_at=r[2], revoked_at=r[3], held=int(r[4])) for r in rows]

    def has_active_keys(self) -> bool:
        return bool(self.engine.read("SELECT 1 FROM keys WHERE revoked_at IS NULL LIMIT 1"))

    def authenticate(self, raw_key: str) -> Account | None:
        """The account for a raw key, or None. Compared as SHA-256 digests in constant time."""
        d = digest(raw_key)
        found = None
        for dev_digest, name in self._dev:  # check all, so timing does not tell which matched
            if hmac.compare_digest(dev_digest, d):
                found = Account(name=name, key_id=None, unlimited=True)
        if found:
            return found
        rows = self.engine.read("SELECT id, name, digest FROM keys WHERE digest = ? AND revoked_at IS NULL", (d,))
        for key_id, name, stored in rows:
            if hmac.compare_digest(bytes(stored), d):
                return Account(name=name, key_id=int(key_id))
        return None

    # -- money --------------------------------------------------------------------------------------------

    def reserve(self, account: Account, request_id: str, amount: int, model: str, endpoint: str,
                prompt_tokens: int = 0, prices: tuple[int, int] = (0, 0)) -> None:
        """Hold ``amount`` of the account's credit for this server's instance. Raises InsufficientCredit without
        changing anything, LedgerError when this process holds no live lease."""
        if account.unlimited:
            return
        if amount > MAX_BALANCE:
            raise InsufficientCredit("not enough credit for this request")
        self.lease.require()

        def tx(db):
            cur = db.execute("UPDATE keys SET balance = balance - ? "
                             "WHERE id = ? AND balance >= ? AND revoked_at IS NULL",
                             (amount, account.key_id, amount))
            if cur.rowcount != 1:
                raise InsufficientCredit("not enough credit for this request")
            leases.insert_hold(self.lease, db, request_id, account.key_id, amount, model, endpoint,
                               prompt_tokens, prices, now())
        self.engine.write(tx)

    def raise_hold(self, account: Account, request_id: str, amount: int, prompt_tokens: int) -> None:
        """Add ``amount`` to an open hold (the worst case once the prompt is counted) and record its prompt tokens.
        Raises InsufficientCredit without changing anything (the hold stays as it was), LedgerError."""
        if account.unlimited:
            return
        amount = max(0, amount)
        if amount > MAX_BALANCE:
            raise InsufficientCredit("not enough credit for this request")
        self.lease.require()

        def tx(db):
            if amount:
                cur = db.execute("UPDATE keys SET balance = balance - ? "
                                 "WHERE id = ? AND balance >= ? AND revoked_at IS NULL",
                                 (amount, account.key_id, amount))
                if cur.rowcount != 1:
                    raise InsufficientCredit("not enough credit for this request")
            cur = db.execute("UPDATE holds SET amount = amount + ?, prompt_tokens = ? WHERE request_id = ?",
                             (amount, prompt_tokens, request_id))
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
            kept = charge
            if not account.unlimited:
                rows = db.execute("DELETE FROM holds WHERE request_id = ? RETURNING amount",
                                  (record.request_id,)).fetchall()
                if not rows:
                    log.error("the hold of %s was already settled (this server's lease had expired)",
                              record.request_id)
                    raise LedgerError("The ledger could not record this request")
                held = int(rows[0][0])
                kept = max(0, min(charge, held))
                if held - kept:
                    db.execute("UPDATE keys SET balance = balance + ? WHERE id = ?", (held - kept, account.key_id))
            insert_request(db, account, record, kept)
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
        """The money totals; ``ok`` is True when grants == balances + holds + charges and no balance < 0."""
        g, b, h, c, neg = (int(v) for v in self.engine.read(
            "SELECT (SELECT COALESCE(SUM(amount), 0) FROM grants), (SELECT COALESCE(SUM(balance), 0) FROM keys), "
            "(SELECT COALESCE(SUM(amount), 0) FROM holds), "
            "(SELECT COALESCE(SUM(price), 0) FROM requests WHERE key_id IS NOT NULL), "
            "(SELECT COUNT(*) FROM keys WHERE balance < 0)")[0])
        return dict(grants=g, balances=b, holds=h, charges=c, ok=(g == b + h + c and neg == 0))


def _check_amount(amount: int, *, allow_zero: bool) -> None:
    if not isinstance(amount, int) or amount < 0 or (amount == 0 and not allow_zero):
        raise ConfigError("the amount must be positive")
    if amount > MAX_BALANCE:
        raise ConfigError(f"the amount may be at most {MAX_BALANCE // 1_000_000:,} credit")


def _grant(db, key_id: int, amount: int) -> None:
    db.execute("INSERT INTO grants (key_id, amount, created_at) VALUES (?, ?, ?)", (key_id, amount, now()))
    db.execute("UPDATE keys SET balance = balance + ? WHERE id = ?", (amount, key_id))


def insert_request(db, account: Account | None, r: RequestRecord, price: int) -> None:
    db.execute(
        "INSERT INTO requests (request_id, key_id, key_name, model, endpoint, prompt_tokens, completion_tokens, "
        "price, status, error_code, latency_ms, created_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (r.request_id, account.key_id if account else None, account.name if account else None, r.model,
         r.endpoint, r.prompt_tokens, r.completion_tokens, price, r.status, r.error_code, r.latency_ms, now(),
         r.body))
