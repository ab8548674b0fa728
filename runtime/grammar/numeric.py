"""GBNF for integer and decimal ranges (JSON Schema minimum/maximum/exclusive*).

Generated numbers never use exponents, and have at most MAX_DIGITS integer digits, so bounds are exact.
"""
import math

MAX_DIGITS = 15  # integer digits; 10**15 is well inside float precision, so float bounds compare exactly
LIMIT = 10 ** MAX_DIGITS - 1


def _uniform(lo: str, hi: str) -> list[str]:
    """Alternatives matching the equal-length digit strings in [lo, hi]."""
    n = len(lo)
    if n == 0:
        return [""]
    if lo[0] == hi[0]:
        return [f'"{lo[0]}" ' + s if s else f'"{lo[0]}"' for s in _uniform(lo[1:], hi[1:])]
    rest = n - 1
    if lo[1:] == "0" * rest and hi[1:] == "9" * rest:
        return [f"[{lo[0]}-{hi[0]}]" + (f" [0-9]{{{rest}}}" if rest else "")]
    out = [f'"{lo[0]}" ' + s for s in _uniform(lo[1:], "9" * rest)]
    if int(hi[0]) - int(lo[0]) > 1:
        out.append(f"[{int(lo[0]) + 1}-{int(hi[0]) - 1}] [0-9]{{{rest}}}")
    out += [f'"{hi[0]}" ' + s for s in _uniform("0" * rest, hi[1:])]
    return out


def nonneg_range(lo: int, hi: int | None) -> list[str]:
    """Alternatives for canonical non-negative integers in [lo, hi] (hi None = up to LIMIT). Empty if none."""
    hi = LIMIT if hi is None else min(hi, LIMIT)
    lo = max(lo, 0)
    out: list[str] = []
    if lo > hi:
        return out
    for width in range(len(str(lo)), len(str(hi)) + 1):
        a = max(lo, 10 ** (width - 1) if width > 1 else 0)
        b = min(hi, 10 ** width - 1)
        if a <= b:
            out += _uniform(str(a), str(b))
    return out


def _alt(parts: list[str]) -> str:
    return "(" + " | ".join(parts) + ")" if len(parts) > 1 else parts[0]


def int_range(lo: int | None, hi: int | None) -> str | None:
    """GBNF for integers in [lo, hi] (None = unbounded); None if the range is empty."""
    lo_c = -LIMIT if lo is None else max(lo, -LIMIT)
    hi_c = LIMIT if hi is None else min(hi, LIMIT)
    if lo_c > hi_c:
        return None
    parts = nonneg_range(max(lo_c, 0), hi_c) if hi_c >= 0 else []
    if lo_c < 0:  # negatives: "-" then magnitude in [max(1, -hi), -lo]
        parts.append('"-" ' + _alt(nonneg_range(max(1, -hi_c), -lo_c)))
    return _alt(parts)


# the last fraction digit is non-zero, so "k.f" is strictly inside (k, k+1): exclusive bounds stay exact
FRACTION = '"." [0-9]{0,14} [1-9]'


def number_range(lo, lo_excl: bool, hi, hi_excl: bool) -> str | None:
    """GBNF for decimals within the bounds (None = unbounded); None if nothing fits.

    Non-integer bounds are rounded inward to integers (tighter, never looser). A decimal "k.f" lies in
    [k, k+1) and "-m.f" in (-(m+1), -m], so fractions are only offered on integer parts whose whole unit
    interval fits inside the bounds; exact integers cover the rest.
    """
    ilo = None if lo is None else (math.floor(lo) + 1 if lo_excl and lo == math.floor(lo) else math.ceil(lo))
    ihi = None if hi is None else (math.ceil(hi) - 1 if hi_excl and hi == math.ceil(hi) else math.floor(hi))
    # for fractional parts the interval is open on the far side, so exclusivity does not matter
    flo = None if lo is None else math.ceil(lo)
    fhi = None if hi is None else math.floor(hi)
    alts = []
    ints = int_range(ilo, ihi)
    if ints:
        alts.append(ints)
    pos = nonneg_range(max(flo or 0, 0), None if fhi is None else fhi - 1)
    if pos:
        alts.append(_alt(pos) + " " + FRACTION)
    if flo is None or flo < 0:
        neg = nonneg_range(max(0, -fhi) if fhi is not None else 0, None if flo is None else -flo - 1)
        if neg:
            alts.append('"-" ' + _alt(neg) + " " + FRACTION)
    return _alt(alts) if alts else None
