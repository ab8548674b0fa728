"""The ledger's tables as numbered migrations: each runs once, in order, in its own transaction."""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: keys, grants, holds, requests. rate_limit_rpm and model_scope are reserved for later issues.
    """
    CREATE TABLE keys (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        digest BLOB NOT NULL UNIQUE,
        balance INTEGER NOT NULL DEFAULT 0 CHECK (balance >= 0),
        created_at TEXT NOT NULL,
        revoked_at TEXT,
        rate_limit_rpm INTEGER,
        model_scope TEXT
    );
    CREATE TABLE grants (
        id INTEGER PRIMARY KEY,
        key_id INTEGER NOT NULL REFERENCES keys(id),
        amount INTEGER NOT NULL CHECK (amount > 0),
        created_at TEXT NOT NULL
    );
    CREATE TABLE holds (
        request_id TEXT PRIMARY KEY,
        key_id INTEGER NOT NULL REFERENCES keys(id),
        amount INTEGER NOT NULL CHECK (amount >= 0),
        model TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE requests (
        id INTEGER PRIMARY KEY,
        request_id TEXT NOT NULL UNIQUE,
        key_id INTEGER REFERENCES keys(id),
        key_name TEXT,
        model TEXT,
        endpoint TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL DEFAULT 0 CHECK (prompt_tokens >= 0),
        completion_tokens INTEGER NOT NULL DEFAULT 0 CHECK (completion_tokens >= 0),
        price INTEGER NOT NULL DEFAULT 0 CHECK (price >= 0),
        status TEXT NOT NULL CHECK (status IN ('completed', 'cancelled', 'failed', 'rejected')),
        error_code TEXT,
        latency_ms REAL,
        created_at TEXT NOT NULL,
        body TEXT
    );
    CREATE INDEX requests_by_key_time ON requests(key_id, created_at);
    CREATE INDEX requests_by_time ON requests(created_at);
    """,
]
