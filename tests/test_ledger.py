"""The ledger on its own: migrations from empty, digests, reserve/settle, crash recovery, the invariant."""

from __future__ import annotations

import concurrent.futures
import sqlite3

import pytest

from reverb.errors import ConfigError, InsufficientCredit
from reverb.ledger import Ledger, RequestRecord
from reverb.ledger.schema import MIGRATIONS
from reverb.request import Account


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path / "l.sqlite3") as led:
        yield led
        assert led.invariant()["ok"], led.invariant()


def account(ledger, name):
    key = ledger.create_key(name, 1000)
    return key, ledger.authenticate(key)


def test_migrations_from_empty(tmp_path):
    path = tmp_path / "new.sqlite3"
    with Ledger(path) as led:
        assert led.schema_version == len(MIGRATIONS)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"keys", "grants", "holds", "requests"} <= tables
    cols = {r[1] for r in db.execute("PRAGMA table_info(keys)")}
    assert {"rate_limit_rpm", "model_scope"} <= cols  # room for later per-key limits
    with Ledger(path) as led:  # reopening does not re-run migrations
        assert led.schema_version == len(MIGRATIONS)


def test_balance_can_never_go_negative(ledger):
    _, acct = account(ledger, "a")
    with pytest.raises(sqlite3.IntegrityError):
        ledger._db.execute("UPDATE keys SET balance = -1 WHERE id = ?", (acct.key_id,))


def test_keys_stored_as_digests(ledger, tmp_path):
    key, acct = account(ledger, "a")
    assert acct.name == "a" and not acct.unlimited
    assert ledger.authenticate(key + "x") is None
    assert key.encode() not in (tmp_path / "l.sqlite3").read_bytes()
    with pytest.raises(ConfigError):
        ledger.create_key("a")


def test_reserve_settle_refunds_the_rest(ledger):
    _, acct = account(ledger, "a")
    ledger.reserve(acct, "r1", 600, "m", "gateway")
    with pytest.raises(InsufficientCredit):
        ledger.reserve(acct, "r2", 600, "m", "gateway")
    assert ledger.invariant()["holds"] == 600
    charged = ledger.settle(acct, RequestRecord("r1", "gateway", "m", "completed", 5, 5), 250)
    assert charged == 250
    assert ledger.list_keys()[0]["balance"] == 750
    # a charge above the hold is capped at the hold
    ledger.reserve(acct, "r3", 100, "m", "gateway")
    assert ledger.settle(acct, RequestRecord("r3", "gateway", "m", "completed"), 10_000) == 100


def test_concurrent_reserves_never_overspend(ledger):
    _, acct = account(ledger, "a")

    def try_reserve(i):
        try:
            ledger.reserve(acct, f"r{i}", 300, "m", "gateway")
            return True
        except InsufficientCredit:
            return False

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ok = sum(pool.map(try_reserve, range(20)))
    assert ok == 3
    assert ledger.invariant()["holds"] == 900


def test_recover_refunds_crashed_holds(tmp_path):
    path = tmp_path / "l.sqlite3"
    with Ledger(path) as led:
        key = led.create_key("a", 1000)
        led.reserve(led.authenticate(key), "lost", 400, "m", "gateway")
    with Ledger(path) as led:
        assert led.recover() == 1
        assert led.list_keys()[0]["balance"] == 1000
        row = led.request("lost")
        assert row["status"] == "failed" and row["error_code"] == "interrupted"
        assert led.invariant()["ok"] and led.recover() == 0


def test_dev_keys_are_unlimited_and_not_stored(tmp_path):
    with Ledger(tmp_path / "l.sqlite3", dev_keys=("sk-dev",)) as led:
        acct = led.authenticate("sk-dev")
        assert acct.unlimited and acct.key_id is None and "sk-dev" not in acct.name
        led.reserve(acct, "r", 10**12, "m", "chat")  # no hold for unlimited keys
        led.settle(acct, RequestRecord("r", "chat", "m", "completed", 1, 1), 7)
        assert led.invariant() == {"grants": 0, "balances": 0, "holds": 0, "charges": 0, "ok": True}


def test_topup_and_revoke(ledger):
    key, acct = account(ledger, "a")
    assert ledger.topup("a", 500) == 1500
    ledger.revoke("a")
    assert ledger.authenticate(key) is None
    with pytest.raises(InsufficientCredit):
        ledger.reserve(Account("a", acct.key_id), "r", 1, "m", "gateway")
    with pytest.raises(ConfigError):
        ledger.topup("nobody", 1)
