"""The ledger: API keys (SHA-256 digests only), credit, holds, and one usage row per request. stdlib sqlite3.

Money is integer micro-units. Before a request runs its worst case is reserved with one conditional UPDATE in a
``BEGIN IMMEDIATE`` transaction, so concurrent requests can never overspend; when the job ends for any reason the
hold is settled: the real charge (never above the hold) is kept and the rest refunded, in the same transaction
that writes the usage row. The invariant, checked by the tests after every run:

    sum(grants) == sum(balances) + sum(open holds) + sum(charges), and no balance below zero.

Crash rule: a hold still open when the server starts was left by a crash (kill -9, power loss). Its request never
reached a durable settlement, so it is refunded in full and logged as ``failed`` / ``interrupted``: the client is
charged nothing for a request whose answer it may never have received.

Speaks only ``request``, ``errors`` and its own records. Keys given on the command line (``--api-key``) are not
stored; they act as unlimited dev keys whose requests are logged with ``key_id`` NULL.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path

from ..errors import ConfigError, InsufficientCredit, LedgerError
from ..request import Account
from .records import RequestRecord
from .schema import MIGRATIONS

def digest(raw_key: str) -> bytes:
    return hashlib.sha256(raw_key.encode("utf-8")).digest()


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Ledger:
    """One SQLite connection. Every method is synchronous; the server calls them from one worker thread."""

    def __init__(self, path: Path | str, dev_keys: tuple[str, ...] = (), busy_timeout: float = 10.0,
                 max_mb: float = 0):
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout)
        except (OSError, sqlite3.Error) as e:
            raise ConfigError(f"cannot open the ledger database: {e}") from None
        self.path = path
        self._lock = threading.Lock()  # one connection; the CLI and tests may use it from several threads
        self._dev = [(digest(k), "env:" + digest(k).hex()[:8]) for k in dev_keys]
        try:
            for pragma in ("journal_mode=WAL", "synchronous=FULL", f"busy_timeout={int(busy_timeout * 1000)}",
                           "foreign_keys=ON"):
                self._db.execute(f"PRAGMA {pragma}")
            self._migrate()
            if max_mb:  # a size cap: past it writes fail with SQLITE_FULL and requests fail closed
                page = self._db.execute("PRAGMA page_size").fetchone()[0]
                self._db.execute(f"PRAGMA max_page_count = {max(1, int(max_mb * 1024 * 1024 / page))}")
        except sqlite3.Error as e:
            raise ConfigError(f"cannot prepare the ledger database: {e}") from None

    # -- schema -------------------------------------------------------------------------------------------

    def _migrate(self) -> None:
        with self._lock:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for statement in script.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version = {number}")
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise

    @property
    def schema_version(self) -> int:
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _tx(self, fn, *args):
        """Run ``fn(cursor, *args)`` in one BEGIN IMMEDIATE transaction. Raises LedgerError on SQLite failure."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise LedgerError(f"ledger unavailable: {e}") from None
            try:
                out = fn(self._db, *args)
                self._db.execute("COMMIT")
                return out
            except BaseException as e:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                if isinstance(e, sqlite3.Error):
                    raise LedgerError(f"ledger unavailable: {e}") from None
                raise

    def _read(self, sql: str, args=()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise LedgerError(f"ledger unavailable: {e}") from None

    # -- keys ---------------------------------------------------------------------------------------------

    def create_key(self, name: str, credit: int = 0) -> str:
        """Create a key and return the raw key (shown once, never stored). Raises ConfigError on a taken name."""
        raw = "rk-" + secrets.token_urlsafe(32)

        def tx(db):
            if db.execute("SELECT 1 FROM keys WHERE name = ?", (name,)).fetchone():
                raise ConfigError(f"a key named '{name}' already exists")
            key_id = db.execute("INSERT INTO keys (name, digest, balance, created_at) VALUES (?, ?, 0, ?)",
                                (name, digest(raw), now())).lastrowid
            if credit > 0:
                _grant(db, key_id, credit)
        self._tx(tx)
        return raw

    def topup(self, name: str, amount: int) -> int:
        """Add credit; returns the new balance. Raises ConfigError for an unknown key or a bad amount."""
        if amount <= 0:
            raise ConfigError("the amount must be positive")

        def tx(db):
            row = db.execute("SELECT id FROM keys WHERE name = ?", (name,)).fetchone()
            if not row:
                raise ConfigError(f"no key named '{name}'")
            _grant(db, row[0], amount)
            return db.execute("SELECT balance FROM keys WHERE id = ?", (row[0],)).fetchone()[0]
        return self._tx(tx)

    def revoke(self, name: str) -> None:
        def tx(db):
            cur = db.execute("UPDATE keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (now(), name))
            if cur.rowcount == 0:
                raise ConfigError(f"no active key named '{name}'")
        self._tx(tx)

    def list_keys(self) -> list[dict]:
        rows = self._read(
            "SELECT k.name, k.balance, k.created_at, k.revoked_at, COALESCE(SUM(h.amount), 0) "
            "FROM keys k LEFT JOIN holds h ON h.key_id = k.id GROUP BY k.id ORDER BY k.id")
        return [dict(name=r[0], balance=r[1], created_at=r[2], revoked_at=r[3], held=r[4]) for r in rows]

    def has_active_keys(self) -> bool:
        return bool(self._read("SELECT 1 FROM keys WHERE revoked_at IS NULL LIMIT 1"))

    def authenticate(self, raw_key: str) -> Account | None:
        """The account for a raw key, or None. Compared as SHA-256 digests in constant time."""
        d = digest(raw_key)
        found = None
        for dev_digest, name in self._dev:  # check all, so timing does not tell which matched
            if hmac.compare_digest(dev_digest, d):
                found = Account(name=name, key_id=None, unlimited=True)
        if found:
            return found
        rows = self._read("SELECT id, name, digest FROM keys WHERE digest = ? AND revoked_at IS NULL", (d,))
        for key_id, name, stored in rows:
            if hmac.compare_digest(bytes(stored), d):
                return Account(name=name, key_id=key_id)
        return None

    # -- money --------------------------------------------------------------------------------------------

    def reserve(self, account: Account, request_id: str, amount: int, model: str, endpoint: str) -> None:
        """Hold ``amount`` of the account's credit. Raises InsufficientCredit without changing anything."""
        if account.unlimited:
            return

        def tx(db):
            cur = db.execute("UPDATE keys SET balance = balance - ? "
                             "WHERE id = ? AND balance >= ? AND revoked_at IS NULL",
                             (amount, account.key_id, amount))
            if cur.rowcount != 1:
                raise InsufficientCredit("not enough credit for this request")
            db.execute("INSERT INTO holds (request_id, key_id, amount, model, endpoint, created_at) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (request_id, account.key_id, amount, model, endpoint, now()))
        self._tx(tx)

    def settle(self, account: Account, record: RequestRecord, charge: int) -> int:
        """Close the request's hold: keep ``charge`` (capped at the hold), refund the rest, write its row.

        Returns the amount charged. Raises LedgerError when it cannot be recorded (the hold then stays open
        and is settled by ``recover`` at the next start).
        """
        def tx(db):
            kept = charge
            if not account.unlimited:
                row = db.execute("SELECT amount FROM holds WHERE request_id = ?", (record.request_id,)).fetchone()
                held = row[0] if row else 0
                kept = min(charge, held)
                db.execute("DELETE FROM holds WHERE request_id = ?", (record.request_id,))
                if held - kept:
                    db.execute("UPDATE keys SET balance = balance + ? WHERE id = ?", (held - kept, account.key_id))
            _insert_request(db, account, record, kept)
            return kept
        return self._tx(tx)

    def log_rejected(self, account: Account | None, record: RequestRecord) -> None:
        """A request refused before it ran (bad key, bad input, no credit...): one row, no money moved."""
        self._tx(lambda db: _insert_request(db, account, record, 0))

    def recover(self) -> int:
        """Settle holds left by a crash: refund them in full and log them as interrupted. Returns how many."""
        def tx(db):
            holds = db.execute("SELECT request_id, key_id, amount, model, endpoint FROM holds").fetchall()
            for request_id, key_id, amount, model, endpoint in holds:
                db.execute("UPDATE keys SET balance = balance + ? WHERE id = ?", (amount, key_id))
                db.execute("DELETE FROM holds WHERE request_id = ?", (request_id,))
                name = db.execute("SELECT name FROM keys WHERE id = ?", (key_id,)).fetchone()[0]
                _insert_request(db, Account(name, key_id), RequestRecord(
                    request_id=request_id, endpoint=endpoint, model=model, status="failed",
                    error_code="interrupted"), 0)
            return len(holds)
        return self._tx(tx)

    # -- reports ------------------------------------------------------------------------------------------

    def usage(self, key: str | None = None, since: str | None = None) -> list[dict]:
        """Per-key, per-model totals, optionally for one key name and from an ISO time on."""
        sql = ("SELECT COALESCE(key_name, '-'), COALESCE(model, '-'), COUNT(*), "
               "SUM(status = 'completed'), SUM(status = 'cancelled'), SUM(status = 'failed'), "
               "SUM(status = 'rejected'), SUM(prompt_tokens), SUM(completion_tokens), SUM(price) "
               "FROM requests WHERE 1=1")
        args: list = []
        if key is not None:
            sql += " AND key_name = ?"
            args.append(key)
        if since is not None:
            sql += " AND created_at >= ?"
            args.append(since)
        sql += " GROUP BY 1, 2 ORDER BY 1, 2"
        cols = ("key", "model", "requests", "completed", "cancelled", "failed", "rejected",
                "prompt_tokens", "completion_tokens", "price")
        return [dict(zip(cols, r, strict=True)) for r in self._read(sql, args)]

    def request(self, request_id: str) -> dict | None:
        rows = self._read("SELECT request_id, key_name, model, endpoint, prompt_tokens, completion_tokens, price, "
                          "status, error_code, latency_ms, body FROM requests WHERE request_id = ?", (request_id,))
        cols = ("request_id", "key", "model", "endpoint", "prompt_tokens", "completion_tokens", "price",
                "status", "error_code", "latency_ms", "body")
        return dict(zip(cols, rows[0], strict=True)) if rows else None

    def invariant(self) -> dict:
        """The money totals; ``ok`` is True when grants == balances + holds + charges and no balance < 0."""
        g, b, h, c, neg = self._read(
            "SELECT (SELECT COALESCE(SUM(amount), 0) FROM grants), (SELECT COALESCE(SUM(balance), 0) FROM keys), "
            "(SELECT COALESCE(SUM(amount), 0) FROM holds), "
            "(SELECT COALESCE(SUM(price), 0) FROM requests WHERE key_id IS NOT NULL), "
            "(SELECT COUNT(*) FROM keys WHERE balance < 0)")[0]
        return dict(grants=g, balances=b, holds=h, charges=c, ok=(g == b + h + c and neg == 0))


def _grant(db, key_id: int, amount: int) -> None:
    db.execute("INSERT INTO grants (key_id, amount, created_at) VALUES (?, ?, ?)", (key_id, amount, now()))
    db.execute("UPDATE keys SET balance = balance + ? WHERE id = ?", (amount, key_id))


def _insert_request(db, account: Account | None, r: RequestRecord, price: int) -> None:
    db.execute(
        "INSERT INTO requests (request_id, key_id, key_name, model, endpoint, prompt_tokens, completion_tokens, "
        "price, status, error_code, latency_ms, created_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (r.request_id, account.key_id if account else None, account.name if account else None, r.model,
         r.endpoint, r.prompt_tokens, r.completion_tokens, price, r.status, r.error_code, r.latency_ms, now(),
         r.body))
