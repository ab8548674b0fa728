"""OpenAI's rate-limit headers from the values a reservation (or a rate-limit refusal) returned.

``x-ratelimit-limit-requests`` / ``-tokens``: the limit per minute (the key's or its team's, whichever has less
left); ``x-ratelimit-remaining-*``: what is left of it after this request; ``x-ratelimit-reset-*``: how long until
the oldest request in the sliding window leaves it (when capacity next grows), in OpenAI's form (``1m0s``,
``12.5s``, ``250ms``). A key and team without a limit get no headers for it.
"""

from __future__ import annotations


def duration(seconds: float) -> str:
    ms = max(0, round(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest = divmod(ms, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def headers(limits: dict | None) -> list[tuple[bytes, bytes]]:
    out = []
    for dim, (limit, remaining, reset) in sorted((limits or {}).items()):
        out += [(f"x-ratelimit-limit-{dim}".encode(), str(limit).encode()),
                (f"x-ratelimit-remaining-{dim}".encode(), str(remaining).encode()),
                (f"x-ratelimit-reset-{dim}".encode(), duration(reset).encode())]
    return out
