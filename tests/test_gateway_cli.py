"""`reverb keys` / `reverb teams` with every setting, and `reverb usage --group-by ... --format ...` (issue 25)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from reverb.ledger import Ledger, RequestRecord

from .conftest import reverb


def run(*args: str) -> str:
    out = reverb(*args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def shown(text: str) -> dict:
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def test_keys_and_teams_take_every_setting(tmp_path):
    db = str(tmp_path / "l.db")
    team = shown(run("teams", "create", "eng", "--credit", "50", "--rpm", "100", "--tpm", "9000",
                     "--max-parallel", "4", "--budget", "20", "--period", "week", "--tz", "Europe/Paris",
                     "--models", "smollm2-*,qwen*", "--db", db))
    assert (team["balance"], team["rpm"], team["budget"], team["period"], team["models"]) == \
        ("50", "100", "20", "week", "smollm2-*,qwen*")
    run("keys", "create", "ann", "--credit", "5", "--rpm", "10", "--tpm", "5000", "--max-parallel", "2",
        "--models", "smollm2-135m", "--budget", "2.5", "--period", "day", "--tz", "UTC", "--expires", "2030-01-01",
        "--team", "eng", "--admin", "--db", db)
    key = shown(run("keys", "show", "ann", "--db", db))
    assert {k: key[k] for k in ("balance", "rpm", "tpm", "max_parallel", "models", "budget", "period", "team",
                                "admin", "expires_at")} == {
        "balance": "5", "rpm": "10", "tpm": "5000", "max_parallel": "2", "models": "smollm2-135m", "budget": "2.5",
        "period": "day", "team": "eng", "admin": "True", "expires_at": "2030-01-02T00:00:00.000000Z"}
    assert json.loads(key["used.budget"])["left"] == "2.5"
    key = shown(run("keys", "update", "ann", "--rpm", "none", "--models", "", "--no-admin", "--team", "none",
                    "--db", db))
    assert (key["rpm"], key["models"], key["admin"], key["team"]) == ("-", "(none)", "False", "-")
    assert "eng" in run("teams", "list", "--db", db)
    assert shown(run("teams", "update", "eng", "--rpm", "none", "--db", db))["rpm"] == "-"
    assert "balance: 52" in run("teams", "topup", "eng", "2", "--db", db).replace("'eng' ", "")


@pytest.mark.parametrize("args, message", [
    (("keys", "create", "x", "--rpm", "-1"), "--rpm"),
    (("keys", "create", "x", "--period", "year"), "period"),
    (("keys", "create", "x", "--tz", "Mars/Olympus"), "time zone"),
    (("keys", "create", "x", "--expires", "soon"), "--expires"),
    (("keys", "create", "x", "--team", "nobody"), "no team"),
    (("keys", "create", "x", "--budget", "lots"), "bad amount"),
    (("usage", "--group-by", "colour"), "--group-by"),
])
def test_bad_settings_are_clean_errors(tmp_path, args, message):
    db = str(tmp_path / "l.db")
    run("keys", "create", "seed", "--db", db)
    out = reverb(*args, "--db", db)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_usage_groups_and_exports(tmp_path):
    db = str(tmp_path / "l.db")
    with Ledger(db) as led:
        led.lease.register(60)
        led.create_team("eng")
        for name, team in (("ann", "eng"), ("bob", None)):
            acct = led.authenticate(led.create_key(name, 1000, team=team))
            for i in range(2):
                led.reserve(acct, f"{name}{i}", 10, "smollm2-135m", "chat.completions", 3)
                led.settle(acct, RequestRecord(f"{name}{i}", "chat.completions", "smollm2-135m", "completed", 3, 4),
                           7)
    rows = list(csv.DictReader(io.StringIO(run("usage", "--group-by", "day,key,model,team", "--format", "csv",
                                               "--db", db))))
    assert [(r["key"], r["team"], r["requests"], r["prompt_tokens"], r["price"]) for r in rows] == [
        ("ann", "eng", "2", "6", "0.000014"), ("bob", "-", "2", "6", "0.000014")]
    by_team = json.loads(run("usage", "--group-by", "team", "--format", "json", "--db", db))
    assert [(r["team"], r["completion_tokens"]) for r in by_team] == [("-", 8), ("eng", 8)]
    table = run("usage", "--group-by", "key", "--db", db)
    assert table.splitlines()[0].split()[:2] == ["key", "requests"] and len(table.splitlines()) == 3
