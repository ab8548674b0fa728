"""Small reads for the web page (api/uidata.py): one request's charge for the key that made it, each key's last
use, and refusals by code. Portable SQL on either engine; nothing here writes."""

from __future__ import annotations

from .manage import shown


def request_of(ledger, request_id: str, key_id: int | None, key_name: str) -> dict | None:
    """The ledger row of ``request_id`` if the caller's key made it (dev keys, which have no id, by their
    ``env:`` name), else None: a request id alone never shows another key's row."""
    rows = ledger.engine.read(
        "SELECT request_id, model, status, error_code, prompt_tokens, completion_tokens, price, key_id, key_name "
        "FROM requests WHERE request_id = ?", (request_id,))
    if not rows:
        return None
    r = rows[0]
    mine = (r[7] == key_id) if key_id is not None else (r[7] is None and r[8] == key_name)
    if not mine:
        return None
    return {"request_id": r[0], "model": r[1], "status": r[2], "error_code": r[3], "prompt_tokens": int(r[4]),
            "completion_tokens": int(r[5]), "price": int(r[6])}


def last_use(ledger) -> list[dict]:
    """When each key last made a request (refusals included): name as listed (a revoked key's stored name ends
    in a control character and its id), whether it is revoked, and the time."""
    rows = ledger.engine.read(
        "SELECT k.name, k.revoked_at, MAX(r.created_at) FROM requests r JOIN keys k ON k.id = r.key_id "
        "GROUP BY k.id, k.name, k.revoked_at")
    latest: dict[tuple[str, bool], str] = {}
    for name, revoked_at, when in rows:
        key = (shown(name), revoked_at is not None)
        if when and (key not in latest or when > latest[key]):
            latest[key] = when
    return [{"name": n, "revoked": r, "last_used": w} for (n, r), w in sorted(latest.items())]


def refusals_by_code(ledger, since: str) -> list[dict]:
    """Refusals since ``since`` (ISO UTC) per error code: those of a key (one row each), those without one
    (counted per client and minute), and the latest time seen (to the minute for keyless ones)."""
    by: dict[str, dict] = {}
    for code, n, last in ledger.engine.read(
            "SELECT COALESCE(error_code, '-'), COUNT(*), MAX(created_at) FROM requests WHERE status = 'rejected' "
            "AND key_name IS NOT NULL AND created_at >= ? GROUP BY COALESCE(error_code, '-')", (since,)):
        by[code] = {"code": code, "with_key": int(n), "without_key": 0, "last": last}
    for code, n, last in ledger.engine.read(
            "SELECT COALESCE(error_code, '-'), SUM(n), MAX(minute) FROM refusals WHERE minute >= ? "
            "GROUP BY COALESCE(error_code, '-')", (since[:16],)):
        row = by.setdefault(code, {"code": code, "with_key": 0, "without_key": 0, "last": last})
        row["without_key"] = int(n)
        row["last"] = max(row["last"] or "", last or "")
    return sorted(by.values(), key=lambda r: (-(r["with_key"] + r["without_key"]), r["code"]))
