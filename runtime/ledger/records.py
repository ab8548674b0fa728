"""One usage row per request, as the ledger stores it."""

from __future__ import annotations

from dataclasses import dataclass


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
