"""Stored Responses (migration 5): the response object and the conversation a ``previous_response_id``
continues, each readable and deletable only by the key that made it. Expired rows are never read and are deleted
when the next one is written. Portable SQL on either engine; the server calls these off the event loop
(``Service.db``)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from ..request import Account
from .records import now

FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"     # the ledger's own time text (records.now)


def owner_of(account: Account | None) -> str:
    """Whose rows these are: a stored key by its id (a rename keeps them), a dev key (no id) by its name."""
    if account is None:
        return "-"
    return f"key:{account.key_id}" if account.key_id is not None else account.name


def store(ledger, response_id: str, owner: str, model: str, conversation: str, response: str,
          ttl_days: float) -> None:
    """Keep a response for ``ttl_days``; expired responses of every key go in the same transaction."""
    created = now()
    expires = (datetime.now(timezone.utc) + timedelta(days=ttl_days)).strftime(FORMAT)

    def write(db):
        db.execute("DELETE FROM responses WHERE expires_at <= ?", (created,))
        db.execute("INSERT INTO responses (id, owner, model, created_at, expires_at, conversation, response) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)", (response_id, owner, model, created, expires, conversation,
                                                    response))
    ledger.engine.write(write)


def load(ledger, response_id: str, owner: str) -> tuple[str, str] | None:
    """(conversation, response) JSON of ``response_id`` if ``owner`` made it and it has not expired, else None:
    an id alone never shows another key's response."""
    rows = ledger.engine.read("SELECT conversation, response FROM responses WHERE id = ? AND owner = ? AND "
                              "expires_at > ?", (response_id, owner, now()))
    return (rows[0][0], rows[0][1]) if rows else None


def delete(ledger, response_id: str, owner: str) -> bool:
    """Delete ``owner``'s response; False when there is none to delete (or it is another key's)."""
    def write(db):
        return db.execute("DELETE FROM responses WHERE id = ? AND owner = ? RETURNING id",
                          (response_id, owner)).fetchone() is not None
    return ledger.engine.write(write)
