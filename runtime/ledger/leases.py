"""Server instances and their leases: whose holds are whose, and the crash rule.

A server registers an instance row with a lease (a deadline on the database's clock) and renews it while it
runs (every third of the lease, and with every hold it makes); every hold names its instance. A server that
stops cleanly expires its own lease and settles what it left. A server that dies (kill -9, power loss) stops
renewing; once its lease has expired any server of the same ledger settles its holds (``sweep``, at start-up and
on every heartbeat), so a dead server's holds are settled within one lease plus one heartbeat.

Crash rule: a swept hold is settled like a disconnect. Its stream recorded how many tokens it had delivered (a
high-water mark written at a bounded rate); the request is charged for its prompt and those tokens (never more
than the hold), the rest is refunded, and its row says ``failed`` / ``interrupted`` with those counts. A hold with
no delivered tokens (a non-streaming request, or a stream that died before its first token) is refunded in full:
its answer never reached the client. Processes that only read or manage keys never register and never sweep.

A server frozen past its lease (a paused VM, swap, SIGSTOP) finds out on its next renewal that it was swept: the
renewal registers it again and raises ``epoch``. Holds made under an older epoch are gone, so the service ends
those requests (``Service.lease_lost``), and a stream sends nothing once ``live()`` is false until a renewal
has said which it is.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from datetime import datetime, timezone

from ..errors import LedgerError
from ..request import Account
from .records import RequestRecord

log = logging.getLogger("reverb.ledger")

UNAVAILABLE = "The ledger is unavailable; try again later"
_DEAD = ("h.instance_id IS NULL OR NOT EXISTS (SELECT 1 FROM instances i "
         "WHERE i.id = h.instance_id AND i.lease_until >= {now})")


class Lease:
    """This process's instance on one ledger (none until ``register``)."""

    def __init__(self, engine):
        self.engine = engine
        self.instance_id: str | None = None
        self.lease_ms = 0
        self._lock = threading.Lock()
        self.epoch = 0              # times this server found its lease gone and its holds settled by another
        self.valid_until = 0.0      # time.monotonic() until which the lease surely holds (it began before that)

    def live(self) -> bool:
        """Whether this server's lease surely still holds (always, for a process without a lease): a renewal
        started at t holds at least until t + lease on any clock that runs at the same rate."""
        return self.instance_id is None or time.monotonic() < self.valid_until

    def renewed(self, started: float, lost: bool) -> None:
        """A renewal that began at ``started`` (monotonic) committed; ``lost``: it found the lease swept."""
        if lost:
            self.epoch += 1
        self.valid_until = max(self.valid_until, started + self.lease_ms / 1000)

    def register(self, lease_seconds: float) -> str:
        """Register this server with a fresh lease; holds can be made from now on. Returns the instance id."""
        with self._lock:
            self.lease_ms = max(1, int(lease_seconds * 1000))
            self.instance_id = "inst_" + secrets.token_hex(8)
            started = time.monotonic()
            self.engine.write(self._insert)
            self.renewed(started, False)
        log.info("ledger %s: instance %s, lease %.1f s", self.engine.describe(), self.instance_id, lease_seconds)
        return self.instance_id

    def _insert(self, db) -> None:
        db.execute(f"INSERT INTO instances (id, host, pid, started_at, lease_until) "
                   f"VALUES (?, ?, ?, ?, {self.engine.now_ms} + ?)",
                   (self.instance_id, socket.gethostname()[:64], os.getpid(),
                    datetime.now(timezone.utc).isoformat(), self.lease_ms))

    def require(self) -> str:
        if self.instance_id is None:
            log.error("a hold was asked of a process that holds no lease (a read-only or client process)")
            raise LedgerError(UNAVAILABLE)
        return self.instance_id

    def heartbeat(self) -> bool:
        """Renew the lease. If it had expired and was swept meanwhile, register the same id again (the holds it
        had are settled already; their own settlements will fail closed), raise ``epoch`` and return True.
        Raises LedgerError."""
        if self.instance_id is None:
            return False
        started = time.monotonic()
        lost = self.engine.write(lambda db: renew(self, db))
        self.renewed(started, lost)
        return lost

    def sweep(self) -> int:
        """Settle every hold whose instance's lease has expired (or that has no live instance). Returns how
        many. Safe to run on several servers at once: each hold is deleted, and so settled, exactly once."""
        now = self.engine.now_ms
        dead = _DEAD.format(now=now)
        holds, expired = self.engine.read(f"SELECT (SELECT COUNT(*) FROM holds h WHERE {dead}), "
                                          f"(SELECT COUNT(*) FROM instances WHERE lease_until < {now})")[0]
        if not holds:
            if expired:
                self.engine.write(lambda db: db.execute(f"DELETE FROM instances WHERE lease_until < {now}"))
            return 0
        return self.engine.write(self._sweep, dead.replace("h.instance_id", "holds.instance_id"))

    def _sweep(self, db, dead: str) -> int:
        from .core import insert_request   # core imports this module
        from .limits import settle_window
        holds = db.execute(f"DELETE FROM holds WHERE {dead} RETURNING request_id, key_id, amount, model, "
                           f"endpoint, prompt_tokens, delivered_tokens, price_input, price_output, team_id, "
                           f"team_held").fetchall()
        for request_id, key_id, amount, model, endpoint, prompt, delivered, p_in, p_out, team, t_held in holds:
            amount, prompt, delivered, t_held = int(amount), int(prompt), int(delivered), int(t_held)
            charge = min(amount, -(-(prompt * int(p_in) + delivered * int(p_out)) // 1_000_000)) if delivered else 0
            if amount - charge:
                db.execute("UPDATE keys SET balance = balance + ? WHERE id = ?", (amount - charge, key_id))
            if t_held - min(charge, t_held):   # the team's share of the hold, refunded alike
                db.execute("UPDATE teams SET balance = balance + ? WHERE id = ?", (t_held - min(charge, t_held), team))
            name = db.execute("SELECT name FROM keys WHERE id = ?", (key_id,)).fetchone()[0].split("\x1f")[0]
            record = RequestRecord(request_id=request_id, endpoint=endpoint, model=model, status="failed",
                                   error_code="interrupted", prompt_tokens=prompt, completion_tokens=delivered)
            settle_window(db, request_id, record)
            insert_request(db, Account(name, int(key_id)), record, charge, team, min(charge, t_held))
        db.execute(f"DELETE FROM instances WHERE lease_until < {self.engine.now_ms}")
        if holds:
            log.warning("settled %d hold(s) of server(s) whose lease expired (crash rule)", len(holds))
        return len(holds)

    def retire(self) -> int:
        """A clean stop: expire this server's lease and settle whatever it still holds. Returns how many."""
        if self.instance_id is None:
            return 0
        self.engine.write(lambda db: db.execute("UPDATE instances SET lease_until = 0 WHERE id = ?",
                                                (self.instance_id,)))
        self.instance_id = None
        return self.sweep()

    def instances(self) -> list[dict]:
        rows = self.engine.read(f"SELECT id, host, pid, lease_until - {self.engine.now_ms} FROM instances "
                                f"ORDER BY started_at")
        return [dict(id=r[0], host=r[1], pid=int(r[2]), lease_left_ms=int(r[3])) for r in rows]


def renew(lease: Lease, db) -> bool:
    """Renew the lease inside a transaction; register it again if a sweeper removed it (returns True then)."""
    renewed = db.execute(f"UPDATE instances SET lease_until = {lease.engine.now_ms} + ? WHERE id = ?",
                         (lease.lease_ms, lease.instance_id)).rowcount
    if renewed == 0:
        log.error("this server's lease had expired and its holds were settled by another server")
        lease._insert(db)
    return renewed == 0


def insert_hold(lease: Lease, db, request_id: str, key_id: int, amount: int, model: str, endpoint: str,
                prompt_tokens: int, prices: tuple[int, int], created_at: str, team_id: int | None = None,
                team_held: int = 0) -> bool:
    """Write a hold for this server's instance, renewing its lease in the same transaction (registering it again
    if a sweeper removed it: returns True then), so no sweeper can take a hold for the holds of a dead server."""
    lost = renew(lease, db)
    db.execute("INSERT INTO holds (request_id, key_id, amount, model, endpoint, created_at, instance_id, "
               "prompt_tokens, price_input, price_output, team_id, team_held) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
               "?, ?)", (request_id, key_id, amount, model, endpoint, created_at, lease.instance_id, prompt_tokens,
                         prices[0], prices[1], team_id, team_held))
    return lost
