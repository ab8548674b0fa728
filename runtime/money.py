"""Money: integer micro-units of the credit currency (no floats on the way to the ledger), the one cost formula,
and decimal amounts of credit as people write them ("1.25"). Imports nothing of ours."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

MICRO = 1_000_000           # micro-units in one credit; prices are micro-units per 1M tokens
MAX_BALANCE = 10**15        # micro-units (one billion credits): far from 64-bit overflow on either ledger engine


def cost(prompt_tokens: int, completion_tokens: int, price_input: int, price_output: int) -> int:
    """Price in micro-units of so many tokens at these prices (micro-units per 1M tokens), rounded up so that a
    request is never free by rounding."""
    return -(-(prompt_tokens * price_input + completion_tokens * price_output) // 1_000_000)


def credits(micro: int) -> float:
    """An amount as a number of credits, for JSON, logs and metrics."""
    return micro / MICRO


def parse_money(value: int | float | str) -> int:
    """A decimal amount of credit ("1.25") as integer micro-units. Raises ValueError."""
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"not a number: {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"must be a finite amount >= 0: {value!r}")
    micro = amount * MICRO
    if micro != micro.to_integral_value():
        raise ValueError(f"more than 6 decimal places: {value!r}")
    return int(micro)


def format_money(micro: int) -> str:
    return f"{Decimal(micro) / MICRO:f}"
