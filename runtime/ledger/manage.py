"""Keys and teams: create, update, top up, revoke, rotate, list, show; every action logged in ``admin_log``.

Settings (the same names on the command line, over HTTP and here): ``rpm``, ``tpm``, ``max_parallel`` (a whole
number >= 1, or None for no limit), ``models`` (a list of catalogue names or fnmatch patterns: ``[]`` allows
nothing, ``["*"]`` everything), ``budget`` (micro-units, or None) with ``period`` (day / week / month) and ``tz``
(an IANA zone, UTC by default), and for keys only ``expires`` (ISO UTC text, or None), ``team`` (a team's name, or
None) and ``admin``. A revoked key keeps its row and history under a name no one can type (its name, a control
character, its id), so its name can be given to a new key.
"""

from __future__ import annotations

import json
import secrets

from ..errors import ConfigError
from . import limits, periods
from .records import check_key_name, printable

LIMITS = ("rpm", "tpm", "max_parallel")
MAX_LIMIT = 10**12
MAX_MODELS, MODEL_CHARS = 64, 128
REVOKED = "\x1f"     # revoked names: name + REVOKED + id (check_key_name refuses control characters)
KEY_COLUMNS = {"rpm": "rate_limit_rpm", "tpm": "tpm", "max_parallel": "max_parallel", "models": "model_scope",
               "budget": "budget", "period": "period", "tz": "tz", "expires": "expires_at", "team": "team_id",
               "admin": "admin"}
TEAM_COLUMNS = {"rpm": "rpm", "tpm": "tpm", "max_parallel": "max_parallel", "models": "models",
                "budget": "budget", "period": "period", "tz": "tz"}
_KEY_SELECT = ("k.id, k.name, k.balance, k.created_at, k.revoked_at, k.rate_limit_rpm, k.tpm, k.max_parallel, "
               "k.model_scope, k.budget, k.period, k.tz, k.expires_at, t.name, k.admin, k.team_id")
_TEAM_SELECT = "id, name, balance, created_at, rpm, tpm, max_parallel, models, budget, period, tz"


def shown(name: str) -> str:
    return name.split(REVOKED)[0]


def models_of(text: str | None) -> tuple[str, ...]:
    return tuple(json.loads(text)) if text else ("*",)


def check_models(models) -> list[str]:
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    if not isinstance(models, (list, tuple)) or len(models) > MAX_MODELS or not all(
            isinstance(m, str) and 0 < len(m) <= MODEL_CHARS and printable(m) == m for m in models):
        raise ConfigError(f"models must be a list of at most {MAX_MODELS} names or patterns (e.g. 'smollm2-*')")
    return list(models)


def columns(settings: dict, table: dict) -> dict:
    """Validated settings -> {column: value}. Raises ConfigError naming the setting."""
    out = {}
    for name, value in settings.items():
        if name not in table:
            raise ConfigError(f"unknown setting '{printable(str(name))[:64]}' (known: {', '.join(table)})")
        if name in LIMITS and value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_LIMIT):
            raise ConfigError(f"{name} must be a whole number from 1 to {MAX_LIMIT} (or none)")
        if name == "budget" and value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 10**15):
            raise ConfigError("the budget must be an amount from 0 to 1,000,000,000 credit (or none)")
        if name == "models":
            value = json.dumps(check_models(value))
        if name == "period":
            periods.check_period(value)
        if name == "tz" and value is not None:
            if not isinstance(value, str):
                raise ConfigError("tz must be an IANA time zone name")
            periods.zone(value)
        if name == "expires" and value is not None:
            value = periods.parse_expiry(value) if isinstance(value, str) else None
            if value is None:
                raise ConfigError("expires must be a date (YYYY-MM-DD) or an ISO date-time")
        if name == "admin":
            if not isinstance(value, bool):
                raise ConfigError("admin must be true or false")
            value = int(value)
        out[table[name]] = value
    return out


def log_action(db, by, action: str, target: str, detail: dict | None = None) -> None:
    """One admin_log row: who (an admin key's account, or None for the command line) did what to whom."""
    from .core import now
    db.execute("INSERT INTO admin_log (created_at, admin_key_id, admin_name, action, target, detail) "
               "VALUES (?, ?, ?, ?, ?, ?)",
               (now(), getattr(by, "key_id", None),
                getattr(by, "name", None) or "cli", action, target,
                json.dumps(detail, sort_keys=True) if detail else None))


class Management:
    """Mixed into Ledger: needs ``engine`` and ``_now_ms``."""

    # -- keys -----------------------------------------------------------------------------------------------

    def create_key(self, name: str, credit: int = 0, *, by=None, **settings) -> str:
        """Create a key and return the raw key (shown once, never stored). Raises ConfigError on a bad or taken
        name, an amount out of range or a bad setting."""
        from .core import _check_amount, _grant, digest, now
        problem = check_key_name(name)
        if problem:
            raise ConfigError(problem)
        _check_amount(credit, allow_zero=True)
        settings.setdefault("models", ["*"])
        raw = "rk-" + secrets.token_urlsafe(32)

        def tx(db):
            if db.execute("SELECT 1 FROM keys WHERE name = ?", (name,)).fetchone():
                raise ConfigError(f"a key named {name!r} already exists")
            cols = columns(_team_id(db, settings), KEY_COLUMNS)
            names = ", ".join(cols)
            key_id = db.execute(f"INSERT INTO keys (name, digest, balance, created_at, {names}) VALUES "
                                f"(?, ?, 0, ?, {', '.join('?' for _ in cols)}) RETURNING id",
                                (name, digest(raw), now(), *cols.values())).fetchone()[0]
            if credit > 0:
                _grant(db, key_id, credit)
            log_action(db, by, "key.create", name, {**dict(settings), "credit": credit})
        self.engine.write(tx)
        return raw

    def update_key(self, name: str, *, by=None, **settings) -> dict:
        """Change an active key's settings (None clears one). Returns the key as ``show_key``."""
        def tx(db):
            key_id = _active(db, name)
            cols = columns(_team_id(db, settings), KEY_COLUMNS)
            if cols:
                db.execute(f"UPDATE keys SET {', '.join(c + ' = ?' for c in cols)} WHERE id = ?",
                           (*cols.values(), key_id))
            log_action(db, by, "key.update", name, dict(settings))
        self.engine.write(tx)
        return self.show_key(name)

    def topup(self, name: str, amount: int, *, by=None) -> int:
        """Add credit; returns the new balance. Raises ConfigError for an unknown or revoked key, a bad amount,
        or a balance that would pass MAX_BALANCE."""
        from .core import MAX_BALANCE, _check_amount, _grant
        _check_amount(amount, allow_zero=False)

        def tx(db):
            key_id = _active(db, name)
            balance = db.execute("SELECT balance FROM keys WHERE id = ?", (key_id,)).fetchone()[0]
            if balance + amount > MAX_BALANCE:
                raise ConfigError(f"that would take the balance past the most a key may hold "
                                  f"({MAX_BALANCE // 1_000_000:,} credit)")
            _grant(db, key_id, amount)
            log_action(db, by, "key.topup", name, {"amount": amount})
            return db.execute("SELECT balance FROM keys WHERE id = ?", (key_id,)).fetchone()[0]
        return self.engine.write(tx)

    def revoke(self, name: str, *, by=None) -> None:
        """Revoke the active key called ``name``; its name becomes free for a new key."""
        from .core import now

        def tx(db):
            key_id = _active(db, name)
            db.execute("UPDATE keys SET revoked_at = ?, name = ? WHERE id = ?",
                       (now(), f"{name}{REVOKED}{key_id}", key_id))
            log_action(db, by, "key.revoke", name)
        self.engine.write(tx)

    def rotate(self, name: str, *, by=None) -> str:
        """A new secret for the active key ``name`` (same name, settings, credit and history); the old secret
        stops working at once. Returns the new raw key (shown once)."""
        from .core import digest
        raw = "rk-" + secrets.token_urlsafe(32)

        def tx(db):
            key_id = _active(db, name)
            db.execute("UPDATE keys SET digest = ? WHERE id = ?", (digest(raw), key_id))
            log_action(db, by, "key.rotate", name)
        self.engine.write(tx)
        return raw

    def list_keys(self) -> list[dict]:
        rows = self.engine.read(
            f"SELECT {_KEY_SELECT}, (SELECT COALESCE(SUM(h.amount), 0) FROM holds h WHERE h.key_id = k.id) "
            f"FROM keys k LEFT JOIN teams t ON t.id = k.team_id ORDER BY k.id")
        return [_key_dict(r) for r in rows]

    def show_key(self, name: str) -> dict:
        """An active key's settings and what it uses now (credit, budget, window, requests running)."""
        def tx(db):
            key_id = _active(db, name)
            row = db.execute(f"SELECT {_KEY_SELECT}, (SELECT COALESCE(SUM(h.amount), 0) FROM holds h "
                             f"WHERE h.key_id = k.id) FROM keys k LEFT JOIN teams t ON t.id = k.team_id "
                             f"WHERE k.id = ?", (key_id,)).fetchone()
            out = _key_dict(row)
            out["usage"] = limits.status(db, key_owner(row), self._now_ms(db))
            return out
        return self.engine.write(tx)

    def has_active_keys(self) -> bool:
        return bool(self.engine.read("SELECT 1 FROM keys WHERE revoked_at IS NULL LIMIT 1"))

    # -- teams ----------------------------------------------------------------------------------------------

    def create_team(self, name: str, credit: int | None = None, *, by=None, **settings) -> dict:
        """A team; ``credit`` None: it has no credit of its own (its keys' credit alone limits them)."""
        from .core import _check_amount, now
        problem = check_key_name(name)
        if problem:
            raise ConfigError(problem.replace("key", "team"))
        if credit is not None:
            _check_amount(credit, allow_zero=True)
        settings.setdefault("models", ["*"])

        def tx(db):
            if db.execute("SELECT 1 FROM teams WHERE name = ?", (name,)).fetchone():
                raise ConfigError(f"a team named {name!r} already exists")
            cols = columns(settings, TEAM_COLUMNS)
            team_id = db.execute(f"INSERT INTO teams (name, balance, created_at, {', '.join(cols)}) VALUES "
                                 f"(?, ?, ?, {', '.join('?' for _ in cols)}) RETURNING id",
                                 (name, 0 if credit is not None else None, now(), *cols.values())).fetchone()[0]
            if credit:
                _team_grant(db, team_id, credit)
            log_action(db, by, "team.create", name, {**dict(settings), "credit": credit})
        self.engine.write(tx)
        return self.show_team(name)

    def update_team(self, name: str, *, by=None, **settings) -> dict:
        def tx(db):
            team_id = _team(db, name)
            cols = columns(settings, TEAM_COLUMNS)
            if cols:
                db.execute(f"UPDATE teams SET {', '.join(c + ' = ?' for c in cols)} WHERE id = ?",
                           (*cols.values(), team_id))
            log_action(db, by, "team.update", name, dict(settings))
        self.engine.write(tx)
        return self.show_team(name)

    def topup_team(self, name: str, amount: int, *, by=None) -> int:
        """Add credit to a team (a team without credit of its own gets a balance from now on)."""
        from .core import MAX_BALANCE, _check_amount
        _check_amount(amount, allow_zero=False)

        def tx(db):
            team_id = _team(db, name)
            balance = db.execute("SELECT COALESCE(balance, 0) FROM teams WHERE id = ?", (team_id,)).fetchone()[0]
            if balance + amount > MAX_BALANCE:
                raise ConfigError("that would take the team's balance past the most it may hold")
            db.execute("UPDATE teams SET balance = COALESCE(balance, 0) WHERE id = ?", (team_id,))
            _team_grant(db, team_id, amount)
            log_action(db, by, "team.topup", name, {"amount": amount})
            return db.execute("SELECT balance FROM teams WHERE id = ?", (team_id,)).fetchone()[0]
        return self.engine.write(tx)

    def list_teams(self) -> list[dict]:
        return [_team_dict(r) for r in self.engine.read(f"SELECT {_TEAM_SELECT} FROM teams ORDER BY id")]

    def show_team(self, name: str) -> dict:
        def tx(db):
            team_id = _team(db, name)
            row = db.execute(f"SELECT {_TEAM_SELECT} FROM teams WHERE id = ?", (team_id,)).fetchone()
            out = _team_dict(row)
            out["keys"] = [r[0] for r in db.execute("SELECT name FROM keys WHERE team_id = ? AND revoked_at IS "
                                                    "NULL ORDER BY id", (team_id,)).fetchall()]
            out["usage"] = limits.status(db, team_owner(row), self._now_ms(db))
            return out
        return self.engine.write(tx)

    def admin_log(self, limit: int = 100) -> list[dict]:
        rows = self.engine.read("SELECT created_at, admin_name, action, target, detail FROM admin_log "
                                "ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(created_at=r[0], admin=r[1], action=r[2], target=r[3],
                     detail=json.loads(r[4]) if r[4] else None) for r in rows]


def _active(db, name: str) -> int:
    row = db.execute("SELECT id FROM keys WHERE name = ? AND revoked_at IS NULL", (name,)).fetchone()
    if row:
        return int(row[0])
    revoked = db.execute("SELECT name FROM keys WHERE revoked_at IS NOT NULL").fetchall()
    if any(shown(r[0]) == name for r in revoked):
        raise ConfigError(f"the key {printable(name)!r} is revoked")
    raise ConfigError(f"no key named {printable(str(name))[:64]!r}")


def _team(db, name: str) -> int:
    row = db.execute("SELECT id FROM teams WHERE name = ?", (name,)).fetchone()
    if not row:
        raise ConfigError(f"no team named {printable(str(name))[:64]!r}")
    return int(row[0])


def _team_id(db, settings: dict) -> dict:
    if settings.get("team") is None:
        return settings
    if not isinstance(settings["team"], str):
        raise ConfigError("team must be a team's name (or none)")
    return {**settings, "team": _team(db, settings["team"])}


def _team_grant(db, team_id: int, amount: int) -> None:
    from .core import now
    db.execute("INSERT INTO team_grants (team_id, amount, created_at) VALUES (?, ?, ?)", (team_id, amount, now()))
    db.execute("UPDATE teams SET balance = balance + ? WHERE id = ?", (amount, team_id))


def key_owner(row) -> limits.Owner:
    """A key's Owner from a row in _KEY_SELECT order."""
    return limits.Owner("key", int(row[0]), shown(row[1]), int(row[2]), row[5], row[6], row[7], row[9], row[10],
                        row[11])


def team_owner(row) -> limits.Owner:
    return limits.Owner("team", int(row[0]), row[1], None if row[2] is None else int(row[2]), row[4], row[5],
                        row[6], row[8], row[9], row[10])


def _key_dict(r) -> dict:
    return dict(name=shown(r[1]), balance=int(r[2]), created_at=r[3], revoked_at=r[4], held=int(r[16]),
                rpm=r[5], tpm=r[6], max_parallel=r[7], models=list(models_of(r[8])), budget=r[9],
                period=r[10] or ("month" if r[9] is not None else None), tz=r[11], expires_at=r[12], team=r[13],
                admin=bool(r[14]))


def _team_dict(r) -> dict:
    return dict(name=r[1], balance=None if r[2] is None else int(r[2]), created_at=r[3], rpm=r[4], tpm=r[5],
                max_parallel=r[6], models=list(models_of(r[7])), budget=r[8],
                period=r[9] or ("month" if r[8] is not None else None), tz=r[10])
