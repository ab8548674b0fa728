"""Per-test keys and what each test spent.

Each test gets its own key, created straight in the server's ledger (no CLI, no HTTP: a few milliseconds), so its
usage is exact whatever else shares the server (pytest-xdist workers, threads). Cost is the ledger's own charge
(the catalogue's prices) unless prices are given, e.g. ``input=2.50,output=10`` (credit per 1M tokens), so a team
can see what the suite would cost against its real provider.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from ..money import credits

CREDIT = 10**12   # micro-units per test key: a million credits, far beyond any test, far below the ledger's cap


@dataclass(frozen=True)
class Usage:
    requests: int = 0             # rows in the ledger: completed, cancelled, failed and refused requests
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0             # credit units (e.g. USD)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict:
        return {**asdict(self), "tokens": self.tokens}


@dataclass(frozen=True)
class Prices:
    input: Decimal     # credit per 1M prompt tokens
    output: Decimal    # credit per 1M completion tokens

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return float((prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000)


def parse_prices(text: str) -> Prices | None:
    """``input=2.50,output=10`` -> Prices; '' -> None (the catalogue's). ValueError names what is wrong."""
    if not text.strip():
        return None
    seen: dict[str, Decimal] = {}
    for part in text.split(","):
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or name not in ("input", "output") or name in seen:
            raise ValueError(f"--reverb-prices takes input=X,output=Y (credit per 1M tokens), not {text!r}")
        try:
            seen[name] = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"--reverb-prices: {value.strip()!r} is not a number") from None
        if not seen[name].is_finite() or seen[name] < 0:
            raise ValueError(f"--reverb-prices: {value.strip()!r} is not a price")
    return Prices(seen.get("input", Decimal(0)), seen.get("output", Decimal(0)))


class KeyRing:
    """Keys for tests in one server's ledger, opened in this process."""

    def __init__(self, db_path: Path, prices: Prices | None = None):
        from ..ledger import Ledger
        self.ledger = Ledger(db_path)
        self.prices = prices
        self._worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        self._n = 0

    def create(self, nodeid: str) -> tuple[str, str]:
        """(key name, raw key) for one test. The name is unique per run and shows the test in `reverb usage`."""
        self._n += 1
        tag = hashlib.sha256(nodeid.encode()).hexdigest()[:8]
        name = f"test-{self._worker}-{self._n}-{tag}"
        return name, self.ledger.create_key(name, CREDIT)

    def usage(self, name: str) -> Usage:
        rows = self.ledger.usage(key=name)
        prompt = sum(r["prompt_tokens"] for r in rows)
        completion = sum(r["completion_tokens"] for r in rows)
        cost = self.prices.cost(prompt, completion) if self.prices else credits(sum(r["price"] for r in rows))
        return Usage(requests=sum(r["requests"] for r in rows), prompt_tokens=prompt, completion_tokens=completion,
                     cost=cost)

    def close(self) -> None:
        self.ledger.close()


def over_budget(usage: Usage, tokens: int | None = None, requests: int | None = None,
                cost: float | None = None) -> str | None:
    """Why ``usage`` is over the budget, or None."""
    for what, used, limit in (("tokens", usage.tokens, tokens), ("requests", usage.requests, requests),
                              ("cost", usage.cost, cost)):
        if limit is not None and used > limit:
            return f"reverb budget exceeded: {used:g} {what} used, the budget is {limit:g}"
    return None
