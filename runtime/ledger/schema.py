"""The ledger's tables as numbered migrations: each runs once, in order, in its own transaction, on either engine.

The SQL is portable (SQLite and PostgreSQL). The only per-engine differences are two type tokens, filled in by
the engine (``TYPES`` in sqlite.py and postgres.py):

    {id}    an auto-numbered primary key: ``INTEGER PRIMARY KEY`` (SQLite's rowid) or a BIGINT identity column
    {blob}  raw bytes: ``BLOB`` or ``BYTEA``

Money and token counts are BIGINT everywhere (PostgreSQL's INTEGER is 32 bits; SQLite stores either as a 64-bit
integer). Times are ISO-8601 UTC text, except lease deadlines, which are milliseconds on the database's clock.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: keys, grants, holds, requests. rate_limit_rpm and model_scope were reserved for later (see 3).
    """
    CREATE TABLE keys (
        id {id},
        name TEXT NOT NULL UNIQUE,
        digest {blob} NOT NULL UNIQUE,
        balance BIGINT NOT NULL DEFAULT 0 CHECK (balance >= 0),
        created_at TEXT NOT NULL,
        revoked_at TEXT,
        rate_limit_rpm BIGINT,
        model_scope TEXT
    );
    CREATE TABLE grants (
        id {id},
        key_id BIGINT NOT NULL REFERENCES keys(id),
        amount BIGINT NOT NULL CHECK (amount > 0),
        created_at TEXT NOT NULL
    );
    CREATE TABLE holds (
        request_id TEXT PRIMARY KEY,
        key_id BIGINT NOT NULL REFERENCES keys(id),
        amount BIGINT NOT NULL CHECK (amount >= 0),
        model TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE requests (
        id {id},
        request_id TEXT NOT NULL UNIQUE,
        key_id BIGINT REFERENCES keys(id),
        key_name TEXT,
        model TEXT,
        endpoint TEXT NOT NULL,
        prompt_tokens BIGINT NOT NULL DEFAULT 0 CHECK (prompt_tokens >= 0),
        completion_tokens BIGINT NOT NULL DEFAULT 0 CHECK (completion_tokens >= 0),
        price BIGINT NOT NULL DEFAULT 0 CHECK (price >= 0),
        status TEXT NOT NULL CHECK (status IN ('completed', 'cancelled', 'failed', 'rejected')),
        error_code TEXT,
        latency_ms DOUBLE PRECISION,
        created_at TEXT NOT NULL,
        body TEXT
    );
    CREATE INDEX requests_by_key_time ON requests(key_id, created_at);
    CREATE INDEX requests_by_time ON requests(created_at);
    """,
    # 2: server instances with leases; each hold belongs to one and carries what a sweeper needs to settle it
    # (prompt tokens, the delivered-token high-water mark, the model's prices). Holds left by a version-1 server
    # have no instance: they are crash leftovers. Refusals without a key are counted per client and minute.
    """
    CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid BIGINT NOT NULL,
        started_at TEXT NOT NULL,
        lease_until BIGINT NOT NULL
    );
    ALTER TABLE holds ADD COLUMN instance_id TEXT;
    ALTER TABLE holds ADD COLUMN prompt_tokens BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE holds ADD COLUMN delivered_tokens BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE holds ADD COLUMN price_input BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE holds ADD COLUMN price_output BIGINT NOT NULL DEFAULT 0;
    CREATE INDEX holds_by_instance ON holds(instance_id);
    CREATE TABLE refusals (
        minute TEXT NOT NULL,
        client TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        error_code TEXT NOT NULL,
        n BIGINT NOT NULL CHECK (n > 0),
        PRIMARY KEY (minute, client, endpoint, error_code)
    );
    CREATE INDEX refusals_by_minute ON refusals(minute);
    """,
    # 3: what a team shares a gateway with (docs/gateway.md). Keys get limits (rate_limit_rpm is the requests per
    # minute; model_scope the allowlist, a JSON array of names or patterns: existing keys get ["*"]), a period
    # budget, an expiry, a team and an admin role. Teams have their own credit (NULL: none of their own), limits,
    # budget and allowlist. Holds and rows say which team they drew on and what they held or charged there.
    # rate_events is the sliding window: one row per admitted request of a key or team with a rate limit.
    # admin_log records every management action with the admin key (or "cli") that did it.
    """
    CREATE TABLE teams (
        id {id},
        name TEXT NOT NULL UNIQUE,
        balance BIGINT CHECK (balance >= 0),
        created_at TEXT NOT NULL,
        rpm BIGINT,
        tpm BIGINT,
        max_parallel BIGINT,
        models TEXT NOT NULL DEFAULT '["*"]',
        budget BIGINT,
        period TEXT,
        tz TEXT
    );
    CREATE TABLE team_grants (
        id {id},
        team_id BIGINT NOT NULL REFERENCES teams(id),
        amount BIGINT NOT NULL CHECK (amount > 0),
        created_at TEXT NOT NULL
    );
    UPDATE keys SET model_scope = '["*"]' WHERE model_scope IS NULL;
    ALTER TABLE keys ADD COLUMN tpm BIGINT;
    ALTER TABLE keys ADD COLUMN max_parallel BIGINT;
    ALTER TABLE keys ADD COLUMN budget BIGINT;
    ALTER TABLE keys ADD COLUMN period TEXT;
    ALTER TABLE keys ADD COLUMN tz TEXT;
    ALTER TABLE keys ADD COLUMN expires_at TEXT;
    ALTER TABLE keys ADD COLUMN team_id BIGINT REFERENCES teams(id);
    ALTER TABLE keys ADD COLUMN admin BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE holds ADD COLUMN team_id BIGINT;
    ALTER TABLE holds ADD COLUMN team_held BIGINT NOT NULL DEFAULT 0;
    CREATE INDEX holds_by_key ON holds(key_id);
    CREATE INDEX holds_by_team ON holds(team_id);
    ALTER TABLE requests ADD COLUMN team_id BIGINT;
    ALTER TABLE requests ADD COLUMN team_price BIGINT NOT NULL DEFAULT 0;
    CREATE INDEX requests_by_team_time ON requests(team_id, created_at);
    CREATE TABLE rate_events (
        request_id TEXT PRIMARY KEY,
        key_id BIGINT NOT NULL,
        team_id BIGINT,
        at_ms BIGINT NOT NULL,
        tokens BIGINT NOT NULL CHECK (tokens >= 0)
    );
    CREATE INDEX rate_events_by_key ON rate_events(key_id, at_ms);
    CREATE INDEX rate_events_by_team ON rate_events(team_id, at_ms);
    CREATE INDEX rate_events_by_time ON rate_events(at_ms);
    CREATE TABLE admin_log (
        id {id},
        created_at TEXT NOT NULL,
        admin_key_id BIGINT,
        admin_name TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT
    )
    """,
    # 4: every model load, failed load and unload, at start or on demand (loader.py), with the server instance,
    # the seconds it took, the memory counted for it and why it was unloaded.
    """
    CREATE TABLE model_events (
        id {id},
        instance_id TEXT,
        model TEXT NOT NULL,
        event TEXT NOT NULL CHECK (event IN ('loaded', 'failed', 'unloaded')),
        seconds DOUBLE PRECISION,
        memory_bytes BIGINT NOT NULL DEFAULT 0,
        reason TEXT,
        created_at TEXT NOT NULL
    );
    CREATE INDEX model_events_by_time ON model_events(created_at);
    """,
    # 5: stored Responses (POST /v1/responses with store true; ledger/responses.py): the conversation a
    # previous_response_id continues (JSON messages: input and output) and the response object, readable only by
    # the key that made it (owner: "key:<id>", or a dev key's name), until expires_at (--responses-ttl).
    """
    CREATE TABLE responses (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        model TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        conversation TEXT NOT NULL,
        response TEXT NOT NULL
    );
    CREATE INDEX responses_by_expiry ON responses(expires_at);
    """,
]


def statements(script: str, types: dict[str, str]) -> list[str]:
    """One migration's statements with the engine's type tokens filled in (no statement contains ';')."""
    return [s.strip() for s in script.format(**types).split(";") if s.strip()]
