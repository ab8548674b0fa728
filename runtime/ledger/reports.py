"""Usage grouped by time, key, model and team, for ``reverb usage --group-by`` and the organization usage and costs
routes; and what a key holder sees of their own standing (``/v1/me``). Aggregated in SQL on either engine."""

from __future__ import annotations

from . import limits
from .manage import _KEY_SELECT, _TEAM_SELECT, key_owner, models_of, shown, team_owner

# group name -> SQL expression (times are ISO text: a prefix is a UTC minute, hour or day)
GROUPS = {"minute": "substr(r.created_at, 1, 16)", "hour": "substr(r.created_at, 1, 13)",
          "day": "substr(r.created_at, 1, 10)", "key": "r.key_name", "model": "COALESCE(r.model, '-')",
          "team": "COALESCE(t.name, '-')", "status": "r.status"}
TOTALS = ("requests", "completed", "cancelled", "failed", "rejected", "prompt_tokens", "completion_tokens", "price")


class Reports:
    """Mixed into Ledger: needs ``engine`` and ``_now_ms``."""

    def usage_by(self, group_by: list[str], since: str | None = None, until: str | None = None,
                 key: str | None = None, endpoints: tuple[str, ...] | None = None) -> list[dict]:
        """Totals per group (any of GROUPS, in order) of the rows with a key, from ``since`` to before
        ``until`` (ISO UTC text), optionally of some endpoints only. Raises ValueError for an unknown group."""
        unknown = [g for g in group_by if g not in GROUPS]
        if unknown or not group_by:
            raise ValueError(f"group by one or more of {', '.join(GROUPS)}")
        cols = [GROUPS[g] for g in group_by]
        sql = (f"SELECT {', '.join(cols)}, COUNT(*), "
               + ", ".join(f"SUM(CASE WHEN r.status = '{s}' THEN 1 ELSE 0 END)"
                           for s in ("completed", "cancelled", "failed", "rejected"))
               + ", SUM(r.prompt_tokens), SUM(r.completion_tokens), SUM(r.price) FROM requests r "
                 "LEFT JOIN teams t ON t.id = r.team_id WHERE r.key_name IS NOT NULL")
        args: list = []
        for cond, value in (("r.created_at >= ?", since), ("r.created_at < ?", until), ("r.key_name = ?", key)):
            if value is not None:
                sql += f" AND {cond}"
                args.append(value)
        if endpoints:
            sql += f" AND r.endpoint IN ({', '.join('?' for _ in endpoints)})"
            args += list(endpoints)
        sql += f" GROUP BY {', '.join(cols)} ORDER BY {', '.join(str(i + 1) for i in range(len(cols)))}"
        out = []
        for row in self.engine.read(sql, args):
            n = len(group_by)
            out.append({**dict(zip(group_by, row[:n], strict=True)),
                        **dict(zip(TOTALS, (int(v or 0) for v in row[n:]), strict=True))})
        return out

    def me(self, key_id: int) -> dict:
        """A key's own standing: credit, budget and limits with what is used of them now, its team's, allowed
        model patterns, expiry."""
        def tx(db):
            now_ms = self._now_ms(db)
            row = db.execute(f"SELECT {_KEY_SELECT}, (SELECT COALESCE(SUM(h.amount), 0) FROM holds h "
                             f"WHERE h.key_id = k.id) FROM keys k LEFT JOIN teams t ON t.id = k.team_id "
                             f"WHERE k.id = ?", (key_id,)).fetchone()
            out = {"name": shown(row[1]), "credit": {"balance": int(row[2]), "held": int(row[16])},
                   "expires_at": row[12], "admin": bool(row[14]), "models": list(models_of(row[8])),
                   "limits": _limits(db, key_owner(row), now_ms), "team": None}
            if row[15] is not None:
                team = db.execute(f"SELECT {_TEAM_SELECT} FROM teams WHERE id = ?", (row[15],)).fetchone()
                owner = team_owner(team)
                out["team"] = {"name": owner.name, "credit": None if owner.balance is None else
                               {"balance": owner.balance}, "models": list(models_of(team[7])),
                               "limits": _limits(db, owner, now_ms)}
            return out
        return self.engine.write(tx)


def _limits(db, owner: limits.Owner, now_ms: int) -> dict:
    used = limits.status(db, owner, now_ms)
    return {"requests_per_minute": owner.rpm, "tokens_per_minute": owner.tpm, "max_parallel": owner.max_parallel,
            "requests_last_minute": used["requests_last_minute"], "tokens_last_minute": used["tokens_last_minute"],
            "running": used["running"], "budget": used.get("budget")}
