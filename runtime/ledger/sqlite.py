"""The SQLite engine (the only sqlite3 user): one file, several processes, WAL mode, ``BEGIN IMMEDIATE`` writes.

An engine knows how to open its database, run a function in one write transaction, read, migrate and report
its size; the rules of money live in ``core.py`` and are the same on every engine. Every sqlite3 failure is
logged here with its details and raised as a LedgerError whose message is generic: SQL text never reaches a
client.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path

from ..errors import ConfigError, LedgerError
from .schema import statements

log = logging.getLogger("reverb.ledger")

TYPES = {"id": "INTEGER PRIMARY KEY", "blob": "BLOB"}
# Milliseconds since the epoch on this machine's clock (every process sharing the file shares the clock).
NOW_MS = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
REFUSAL_SHARE = 0.9   # refusal rows are written only while the file is below this share of --db-max-mb
UNAVAILABLE = "The ledger is unavailable; try again later"


class SQLiteEngine:
    name = "sqlite"
    now_ms = NOW_MS

    def __init__(self, path: Path, *, create: bool = True, busy_timeout: float = 10.0, max_mb: float = 0):
        self.path = path
        self.max_pages = 0
        self._lock = threading.Lock()  # one connection; the server's ledger thread and its lease calls share it
        memory = str(path) == ":memory:"
        try:
            if not memory and not path.exists():
                if not create:
                    raise ConfigError(f"no ledger at {path} (check --db; this command does not create one)")
                _create_private(path)
            target = str(path) if memory else f"file:{path}?mode=rw"
            self._db = sqlite3.connect(target, uri=not memory, isolation_level=None, check_same_thread=False,
                                       timeout=busy_timeout)
        except (OSError, sqlite3.Error) as e:
            raise ConfigError(f"cannot open the ledger database {path}: {e}") from None
        try:
            for pragma in ("journal_mode=WAL", "synchronous=FULL", f"busy_timeout={int(busy_timeout * 1000)}",
                           "foreign_keys=ON"):
                self._db.execute(f"PRAGMA {pragma}")
        except sqlite3.Error as e:
            self._db.close()
            raise ConfigError(f"cannot prepare the ledger database {path}: {e}") from None
        if max_mb:  # a size cap: past it writes fail with SQLITE_FULL and requests fail closed
            page = self._db.execute("PRAGMA page_size").fetchone()[0]
            self.max_pages = max(1, int(max_mb * 1024 * 1024 / page))

    def describe(self) -> str:
        return str(self.path)

    def migrate(self, scripts: list[str]) -> None:
        """Run the migrations this file has not seen, each in its own transaction. Raises ConfigError."""
        try:
            current = self._db.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(scripts[current:], start=current + 1):   # none: no write lock taken
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    # read inside the write lock: another process may have migrated meanwhile
                    if self._db.execute("PRAGMA user_version").fetchone()[0] < number:
                        for statement in statements(script, TYPES):
                            self._db.execute(statement)
                        self._db.execute(f"PRAGMA user_version = {number}")
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            if self.max_pages:  # set after migrating, so a tiny cap never blocks the schema itself
                self._db.execute(f"PRAGMA max_page_count = {self.max_pages}")
        except sqlite3.Error as e:
            raise ConfigError(f"cannot prepare the ledger database {self.path}: {e}") from None

    def version(self) -> int:
        return self.read("PRAGMA user_version")[0][0]

    def write(self, fn, *args):
        """``fn(db, *args)`` in one BEGIN IMMEDIATE transaction; ``db.execute(sql, args)`` takes ``?``
        placeholders. Raises LedgerError on any database failure (rolled back)."""
        with self._lock:
            return self._write(fn, *args)

    def _write(self, fn, *args):
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise _unavailable(e)
        try:
            out = fn(self._db, *args)
            self._db.execute("COMMIT")
            return out
        except BaseException as e:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(e, (sqlite3.Error, OverflowError)):
                raise _unavailable(e)
            raise

    def read(self, sql: str, args=()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except (sqlite3.Error, OverflowError) as e:
                raise _unavailable(e)

    def room_for_refusals(self, db) -> bool:
        """Inside a write: whether the file is below REFUSAL_SHARE of its cap (always, without a cap), so
        refusals can never take the space that settlements need."""
        if not self.max_pages:
            return True
        used = db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
        return used < REFUSAL_SHARE * self.max_pages

    def close(self) -> None:
        self._db.close()


def _create_private(path: Path) -> None:
    """Create the ledger file (and its directory) readable by its owner only: it may hold prompts
    (--log-bodies). SQLite gives the -wal and -shm files the main file's permissions."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass  # another process created it first


def _unavailable(e: BaseException) -> LedgerError:
    log.error("ledger (sqlite): %s: %s", type(e).__name__, e)
    return LedgerError(UNAVAILABLE)
