"""`reverb keys` / `reverb usage` at their edges: clean errors for bad amounts, names, durations and --db values,
and read-only commands that never create a ledger."""

from __future__ import annotations

import pytest

from reverb.ledger import Ledger

from .conftest import reverb


def clean_error(out, *needles: str) -> None:
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and "reverb: error:" in out.stderr, out.stderr
    for needle in needles:
        assert needle in out.stderr, out.stderr


@pytest.mark.parametrize("credit", ["1e400", "1e999999999", "-5", "nan", "1000000001", "0.0000001"])
def test_bad_credit_is_a_clean_error_and_creates_nothing(tmp_path, credit):
    db = tmp_path / "l.sqlite3"
    clean_error(reverb("keys", "create", "bob", "--credit", credit, "--db", str(db)), "amount")
    assert not db.exists()


def test_topups_cannot_overflow_a_balance(tmp_path):
    db = str(tmp_path / "l.sqlite3")
    assert reverb("keys", "create", "rich", "--credit", "600000000", "--db", db).returncode == 0
    clean_error(reverb("keys", "topup", "rich", "9e12", "--db", db), "at most")
    clean_error(reverb("keys", "topup", "rich", "500000000", "--db", db), "most a key may hold")
    ok = reverb("keys", "topup", "rich", "400000000", "--db", db)
    assert ok.returncode == 0 and "1000000000" in ok.stdout
    with Ledger(db, create=False) as ledger:
        assert ledger.list_keys()[0]["balance"] == 10**15 and ledger.invariant()["ok"]


@pytest.mark.parametrize("name", ["", "two\nlines", "x" * 65, "esc\x1b[31m"])
def test_bad_key_names_are_refused(tmp_path, name):
    db = str(tmp_path / "l.sqlite3")
    clean_error(reverb("keys", "create", name, "--db", db), "key name")


def test_since_out_of_range_is_a_clean_error(tmp_path):
    db = str(tmp_path / "l.sqlite3")
    assert reverb("keys", "create", "a", "--db", db).returncode == 0
    clean_error(reverb("usage", "--since", "99999999999d", "--db", db), "--since")
    clean_error(reverb("usage", "--since", "yesterday", "--db", db), "--since")


@pytest.mark.parametrize("args", [["keys", "list"], ["usage"], ["keys", "revoke", "x"], ["keys", "topup", "x", "1"],
                                  ["chat"]])
def test_read_only_commands_never_create_a_ledger(tmp_path, args):
    typo = tmp_path / "typo" / "ledgr.sqlite3"
    clean_error(reverb(*args, "--db", str(typo)), "no ledger at")
    assert not typo.parent.exists()


def test_default_ledger_is_not_created_by_listing(tmp_path):
    out = reverb("keys", "list", env={"XDG_DATA_HOME": str(tmp_path)})
    clean_error(out, "no ledger at")
    assert list(tmp_path.iterdir()) == []


def test_other_url_schemes_are_refused(tmp_path):
    out = reverb("usage", "--db", "mysql://root@127.0.0.1/reverb")
    clean_error(out, "unsupported ledger URL scheme")


def test_keys_and_usage_on_postgres(pg_url):
    out = reverb("keys", "create", "pg-user", "--credit", "2.5", "--db", pg_url)
    assert out.returncode == 0, out.stderr
    listing = reverb("keys", "list", "--db", pg_url)
    assert listing.returncode == 0 and "pg-user" in listing.stdout and "2.5" in listing.stdout
    assert reverb("keys", "topup", "pg-user", "1", "--db", pg_url).returncode == 0
    usage = reverb("usage", "--db", pg_url, "--since", "1d")
    assert usage.returncode == 0 and "Traceback" not in usage.stderr
    with Ledger(pg_url, create=False) as ledger:
        assert ledger.list_keys()[0]["balance"] == 3_500_000 and ledger.invariant()["ok"]
