"""One usage row per request, as the ledger stores it, and the bounds on text that reaches storage."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone

from ..request import Account

MODEL_CHARS = 64            # a model name not in the catalogue is stored as "unknown:" + at most this many chars
UNKNOWN_MODEL = "unknown:"  # the flag: catalogue names never contain ':'
KEY_NAME_CHARS = 64
_UNPRINTABLE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


@dataclass(frozen=True)
class RequestRecord:
    request_id: str
    endpoint: str
    model: str | None
    status: str                 # completed | cancelled | failed | rejected
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error_code: str | None = None
    latency_ms: float | None = None
    body: str | None = None


def printable(text: str) -> str:
    """``text`` with control, format and separator characters replaced by '?', safe for one log or table line."""
    return "".join("?" if unicodedata.category(c) in _UNPRINTABLE else c for c in text)


def bounded_model(name: str | None, known) -> str | None:
    """The model name a row stores: a catalogue name as it is; anything else flagged and cut to MODEL_CHARS, so
    a client cannot grow the ledger or forge a line with the name it sends."""
    if name is None or name in known:
        return name
    cut = printable(str(name)[:MODEL_CHARS])
    return UNKNOWN_MODEL + cut + ("..." if len(str(name)) > MODEL_CHARS else "")


def check_key_name(name: str) -> str | None:
    """Why ``name`` cannot name a key, or None: it is shown in tables and log lines, one per line."""
    if not isinstance(name, str) or not name.strip():
        return "a key name may not be empty"
    if len(name) > KEY_NAME_CHARS:
        return f"a key name may have at most {KEY_NAME_CHARS} characters"
    if name != name.strip() or printable(name) != name:
        return "a key name may not contain control characters, line breaks or surrounding spaces"
    return None


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def insert_request(db, account: Account | None, r: RequestRecord, price: int, team_id: int | None = None,
                   team_price: int = 0, created_at: str | None = None) -> None:
    db.execute(
        "INSERT INTO requests (request_id, key_id, key_name, model, endpoint, prompt_tokens, completion_tokens, "
        "price, status, error_code, latency_ms, created_at, body, team_id, team_price) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (r.request_id, account.key_id if account else None, account.name if account else None, r.model,
         r.endpoint, r.prompt_tokens, r.completion_tokens, price, r.status, r.error_code, r.latency_ms,
         created_at or now(), r.body, team_id, team_price))


def settle_window(db, request_id: str, record: RequestRecord) -> None:
    """The request's tokens-per-minute reservation becomes what it used (never more than it reserved); a request
    refused after its hold (it never ran) leaves the window altogether."""
    if record.status == "rejected":
        db.execute("DELETE FROM rate_events WHERE request_id = ?", (request_id,))
        return
    used = record.prompt_tokens + record.completion_tokens
    db.execute("UPDATE rate_events SET tokens = ? WHERE request_id = ? AND tokens > ?", (used, request_id, used))
