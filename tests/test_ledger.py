"""The ledger on its own, on both engines (SQLite file and PostgreSQL): migrations, digests, reserve/settle,
leases and the crash rule, bounds on amounts, names and refusals, and the invariant after every test."""

from __future__ import annotations

import concurrent.futures
import os
import sqlite3

import pytest

from reverb.errors import AuthenticationError, ConfigError, InsufficientCredit, LedgerError
from reverb.ledger import MAX_BALANCE, Ledger, RequestRecord
from reverb.ledger.core import DETAIL_ROWS_PER_MINUTE
from reverb.ledger.schema import MIGRATIONS, statements
from reverb.ledger.sqlite import TYPES as SQLITE_TYPES
from reverb.request import Account


@pytest.fixture
def ledger(db_target):
    with Ledger(db_target) as led:
        led.lease.register(60)
        yield led
        assert led.invariant()["ok"], led.invariant()


def account(ledger, name, credit=1000):
    key = ledger.create_key(name, credit)
    return key, ledger.authenticate(key)


def test_migrations_from_empty(db_target):
    with Ledger(db_target) as led:
        assert led.schema_version == len(MIGRATIONS)
        tables = {r[0] for r in led.engine.read(
            "SELECT name FROM sqlite_master WHERE type = 'table'" if led.engine.name == "sqlite" else
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
        assert {"keys", "grants", "holds", "requests", "instances", "refusals"} <= tables
        assert led.invariant() == {"grants": 0, "balances": 0, "holds": 0, "charges": 0, "ok": True}
    with Ledger(db_target) as led:  # reopening does not re-run migrations
        assert led.schema_version == len(MIGRATIONS)
        assert led.list_keys() == []


def test_sqlite_file_is_wal_and_private(tmp_path):
    path = tmp_path / "new" / "l.sqlite3"
    with Ledger(path) as led:
        led.create_key("a", 5)
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
        assert all(f.exists() for f in files)
        assert {oct(os.stat(f).st_mode & 0o777) for f in files} == {"0o600"}  # may hold prompts (--log-bodies)
        assert os.stat(path.parent).st_mode & 0o077 == 0
        db.close()


def test_version_1_sqlite_ledger_migrates_forward_without_losing_data(tmp_path):
    path = tmp_path / "v1.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    for statement in statements(MIGRATIONS[0], SQLITE_TYPES):
        db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO keys (name, digest, balance, created_at) VALUES ('old', x'00', 700, 't')")
    db.execute("INSERT INTO grants (key_id, amount, created_at) VALUES (1, 1000, 't')")
    db.execute("INSERT INTO holds VALUES ('r-held', 1, 200, 'm', 'gateway', 't')")   # left by a v1 crash
    db.execute("INSERT INTO requests (request_id, key_id, key_name, model, endpoint, price, status, created_at) "
               "VALUES ('r-done', 1, 'old', 'm', 'gateway', 100, 'completed', 't')")
    db.close()
    with Ledger(path, create=False) as led:   # a read-only open migrates the schema but settles nothing
        assert led.schema_version == len(MIGRATIONS)
        old = led.list_keys()[0]
        assert {k: old[k] for k in ("name", "balance", "revoked_at", "held")} == dict(
            name="old", balance=700, revoked_at=None, held=200)
        assert old["models"] == ["*"] and old["rpm"] is None and old["team"] is None   # migration 3
        assert led.request("r-done")["price"] == 100 and led.invariant()["ok"]
        assert [h["request_id"] for h in led.holds()] == ["r-held"]
    with Ledger(path) as led:   # a server: a hold with no instance is a crash leftover, refunded in full
        led.lease.register(60)
        assert led.lease.sweep() == 1
        assert led.list_keys()[0]["balance"] == 900 and led.invariant()["ok"]
        assert led.request("r-held")["status"] == "failed" and led.request("r-held")["price"] == 0


def test_balance_can_never_go_negative(ledger):
    _, acct = account(ledger, "a")
    with pytest.raises(LedgerError) as e:
        ledger.engine.write(lambda db: db.execute("UPDATE keys SET balance = -1 WHERE id = ?", (acct.key_id,)))
    assert "CHECK" not in e.value.message and "balance" not in e.value.message   # no SQL text for clients


def test_keys_stored_as_digests(ledger):
    key, acct = account(ledger, "a")
    assert acct.name == "a" and not acct.unlimited
    assert ledger.authenticate(key + "x") is None
    stored = ledger.engine.read("SELECT digest FROM keys")[0][0]
    assert key.encode() not in bytes(stored) and len(bytes(stored)) == 32
    with pytest.raises(ConfigError):
        ledger.create_key("a")


def test_reserve_settle_refunds_the_rest(ledger):
    _, acct = account(ledger, "a")
    ledger.reserve(acct, "r1", 600, "m", "gateway")
    with pytest.raises(InsufficientCredit):
        ledger.reserve(acct, "r2", 600, "m", "gateway")
    assert ledger.invariant()["holds"] == 600
    assert ledger.holds()[0]["instance_id"] == ledger.lease.instance_id
    charged = ledger.settle(acct, RequestRecord("r1", "gateway", "m", "completed", 5, 5), 250)
    assert charged == 250
    assert ledger.list_keys()[0]["balance"] == 750
    # a charge above the hold is capped at the hold
    ledger.reserve(acct, "r3", 100, "m", "gateway")
    assert ledger.settle(acct, RequestRecord("r3", "gateway", "m", "completed"), 10_000) == 100
    # settling twice is refused (the hold is gone), without touching money or rows
    with pytest.raises(LedgerError):
        ledger.settle(acct, RequestRecord("r3", "gateway", "m", "completed"), 1)


def test_concurrent_reserves_on_two_ledgers_never_overspend(ledger, db_target):
    """Two servers' ledgers on one database, 20 threads: exactly the affordable number of holds."""
    _, acct = account(ledger, "a")
    with Ledger(db_target) as other:
        other.lease.register(60)

        def try_reserve(i):
            try:
                (ledger if i % 2 else other).reserve(acct, f"r{i}", 300, "m", "gateway")
                return True
            except InsufficientCredit:
                return False

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            ok = sum(pool.map(try_reserve, range(20)))
    assert ok == 3
    assert ledger.invariant()["holds"] == 900 and ledger.list_keys()[0]["balance"] == 100


def test_expired_lease_holds_are_settled_for_what_was_delivered(ledger, db_target):
    _, acct = account(ledger, "a", 10_000)
    with Ledger(db_target) as dead:
        dead.lease.register(60)
        dead.reserve(acct, "streamed", 3000, "m", "gateway", prompt_tokens=10, prices=(100_000, 200_000))
        dead.progress("streamed", 7)
        dead.progress("streamed", 5)                        # a mark only rises
        dead.reserve(acct, "silent", 2000, "m", "gateway", prompt_tokens=10, prices=(100_000, 200_000))
        ledger.reserve(acct, "live", 1000, "m", "gateway")
        assert ledger.lease.sweep() == 0                    # both leases live: nothing to settle
        dead.engine.write(lambda db: db.execute("UPDATE instances SET lease_until = 0 WHERE id = ?",
                                                (dead.lease.instance_id,)))
        assert ledger.lease.sweep() == 2
        assert ledger.lease.sweep() == 0                    # exactly once
        with pytest.raises(LedgerError):                    # a server cannot settle a hold a sweeper settled
            dead.settle(acct, RequestRecord("streamed", "gateway", "m", "completed", 10, 50), 50)
        dead.reserve(acct, "after", 10, "m", "gateway")     # its next hold registers it again, live
        assert ledger.lease.sweep() == 0
        dead.settle(acct, RequestRecord("after", "gateway", "m", "completed"), 10)
    streamed, silent = ledger.request("streamed"), ledger.request("silent")
    cost = -(-(10 * 100_000 + 7 * 200_000) // 1_000_000)
    assert (streamed["status"], streamed["error_code"]) == ("failed", "interrupted")
    assert (streamed["prompt_tokens"], streamed["completion_tokens"], streamed["price"]) == (10, 7, cost)
    assert silent["price"] == 0 and silent["completion_tokens"] == 0  # nothing reached the client: no charge
    assert [h["request_id"] for h in ledger.holds()] == ["live"]    # the live server's hold is untouched
    assert ledger.list_keys()[0]["balance"] == 10_000 - 1000 - cost - 10
    ledger.settle(acct, RequestRecord("live", "gateway", "m", "completed"), 1)


def test_a_process_without_a_lease_never_holds_nor_sweeps(ledger, db_target):
    _, acct = account(ledger, "a")
    ledger.reserve(acct, "held", 100, "m", "gateway")
    ledger.engine.write(lambda db: db.execute("UPDATE instances SET lease_until = 0"))   # looks dead
    with Ledger(db_target, create=False) as reader:
        assert reader.list_keys()[0]["held"] == 100 and reader.usage() == []
        with pytest.raises(LedgerError):
            reader.reserve(acct, "r", 1, "m", "gateway")
        assert reader.lease.retire() == 0
    assert ledger.invariant()["holds"] == 100
    ledger.lease.heartbeat()
    ledger.settle(acct, RequestRecord("held", "gateway", "m", "completed"), 0)


def test_a_hold_renews_its_servers_lease(ledger):
    _, acct = account(ledger, "a")
    ledger.reserve(acct, "old", 100, "m", "gateway")
    ledger.engine.write(lambda db: db.execute("UPDATE instances SET lease_until = 0"))   # heartbeats were late
    ledger.reserve(acct, "new", 100, "m", "gateway")      # but the server is alive: its lease is live again
    assert ledger.lease.sweep() == 0 and ledger.invariant()["holds"] == 200
    assert ledger.lease.instances()[0]["lease_left_ms"] > 0
    for rid in ("old", "new"):
        ledger.settle(acct, RequestRecord(rid, "gateway", "m", "completed"), 1)


def test_retire_settles_what_a_clean_stop_left(ledger, db_target):
    _, acct = account(ledger, "a")
    ledger.reserve(acct, "left", 100, "m", "gateway", prompt_tokens=3, prices=(1, 1))
    assert ledger.lease.retire() == 1
    assert ledger.invariant()["holds"] == 0 and ledger.lease.instances() == []


def test_dev_keys_are_unlimited_and_not_stored(db_target):
    with Ledger(db_target, dev_keys=("sk-dev",)) as led:
        acct = led.authenticate("sk-dev")
        assert acct.unlimited and acct.key_id is None and "sk-dev" not in acct.name
        led.reserve(acct, "r", 10**12, "m", "chat")  # no hold for unlimited keys, no lease needed
        led.settle(acct, RequestRecord("r", "chat", "m", "completed", 1, 1), 7)
        assert led.invariant() == {"grants": 0, "balances": 0, "holds": 0, "charges": 0, "ok": True}


def test_topup_and_revoke(ledger):
    key, acct = account(ledger, "a")
    assert ledger.topup("a", 500) == 1500
    ledger.revoke("a")
    assert ledger.authenticate(key) is None
    with pytest.raises(AuthenticationError):   # revoked between authentication and the hold: 401
        ledger.reserve(Account("a", acct.key_id), "r", 1, "m", "gateway")
    with pytest.raises(ConfigError):
        ledger.topup("nobody", 1)
    with pytest.raises(ConfigError, match="revoked"):
        ledger.topup("a", 1)


def test_amounts_are_bounded_and_balances_stay_integers(ledger):
    with pytest.raises(ConfigError):
        ledger.create_key("huge", MAX_BALANCE + 1)
    with pytest.raises(ConfigError):
        ledger.create_key("neg", -1)
    account(ledger, "a", MAX_BALANCE - 10)
    assert ledger.topup("a", 10) == MAX_BALANCE
    with pytest.raises(ConfigError):
        ledger.topup("a", 1)                              # would pass the cap
    with pytest.raises(ConfigError):
        ledger.topup("a", 10**30)
    balance = ledger.list_keys()[0]["balance"]
    assert balance == MAX_BALANCE and isinstance(balance, int)
    stored = ledger.engine.read("SELECT balance FROM keys")[0][0]
    assert isinstance(stored, int) and stored == MAX_BALANCE   # never a float in the database
    with pytest.raises(InsufficientCredit):                    # a hold beyond any balance is just unaffordable
        ledger.reserve(ledger.authenticate(ledger.create_key("b", 5)), "r", 10**25, "m", "gateway")


@pytest.mark.parametrize("name", ["", "   ", "a\nb", "tab\there", "x" * 65, " lead", "bell\x07", "rtl\u202e"])
def test_bad_key_names_are_refused(ledger, name):
    with pytest.raises(ConfigError):
        ledger.create_key(name, 1)
    assert ledger.list_keys() == []


def test_refusals_without_a_key_are_tallied_per_client(ledger):
    for i in range(DETAIL_ROWS_PER_MINUTE + 20):
        ledger.log_rejected(None, RequestRecord(f"q{i}", "unknown", None, "rejected", error_code="invalid_api_key"),
                            "10.0.0.1")
    ledger.log_rejected(None, RequestRecord("other", "gateway", None, "rejected", error_code="invalid_api_key"),
                        "10.0.0.2\nforged")
    rows = ledger.engine.read("SELECT COUNT(*) FROM requests")[0][0]
    assert rows == DETAIL_ROWS_PER_MINUTE + 1                   # detail rows only for the first few per minute
    tallies = {(r["client"], r["endpoint"]): r["n"] for r in ledger.refusals()}
    assert tallies == {("10.0.0.1", "unknown"): DETAIL_ROWS_PER_MINUTE + 20, ("10.0.0.2?forged", "gateway"): 1}
    assert ledger.usage()[0] | {} == dict(key="-", model="-", requests=DETAIL_ROWS_PER_MINUTE + 21, completed=0,
                                          cancelled=0, failed=0, rejected=DETAIL_ROWS_PER_MINUTE + 21,
                                          prompt_tokens=0, completion_tokens=0, price=0)


def test_refusals_stop_before_the_cap_so_settlements_fit(tmp_path):
    with Ledger(tmp_path / "capped.sqlite3", max_mb=0.25) as led:
        led.lease.register(60)
        _, acct = account(led, "payer", 10**9)
        key = led.authenticate(led.create_key("noisy", 0))
        written = 0
        for i in range(5000):
            if not led.log_rejected(key, RequestRecord(f"n{i}", "gateway", "m" * 64, "rejected",
                                                       error_code="insufficient_credit")):
                break
            written += 1
        assert 0 < written < 5000                                   # refusals stopped being recorded...
        for i in range(20):                                        # ...and paying requests still settle
            led.reserve(acct, f"p{i}", 100, "m", "gateway")
            led.settle(acct, RequestRecord(f"p{i}", "gateway", "m", "completed", 5, 5, body="b" * 200), 10)
        assert led.invariant()["ok"] and led.invariant()["charges"] == 200


def test_read_only_open_never_creates_anything(tmp_path):
    target = tmp_path / "typo" / "ledger.sqlite3"
    with pytest.raises(ConfigError, match="no ledger"):
        Ledger(target, create=False)
    assert not target.parent.exists()


@pytest.mark.parametrize("url", ["mysql://u@h/db", "sqlite:///x.db", "http://example/ledger"])
def test_other_url_schemes_are_refused(tmp_path, url, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="unsupported ledger URL scheme"):
        Ledger(url)
    assert list(tmp_path.iterdir()) == []                           # no directory named after the scheme


def test_unreachable_postgres_is_a_clear_error():
    import socket
    with socket.socket() as s:       # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match="cannot reach the ledger database") as e:
        Ledger(f"postgresql://u:secret@127.0.0.1:{port}/db", busy_timeout=1)
    assert "secret" not in e.value.message
