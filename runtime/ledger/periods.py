"""Calendar budget periods (day, week from Monday, month) in UTC or a named time zone, and the ledger's times.

A period is computed from the database's clock at the moment of the check, never stored: a new day starts a new
budget with no reset job to lag. Times in rows are ISO-8601 UTC text with microseconds, so they sort as text.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import ConfigError

PERIODS = ("day", "week", "month")


def stamp(ms: int) -> str:
    """Milliseconds since the epoch -> the ledger's ISO UTC text."""
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def zone(name: str | None):
    """The time zone called ``name`` (None or 'UTC': UTC). Raises ConfigError for an unknown name."""
    if not name or name.upper() == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(f"unknown time zone {name[:64]!r} (use an IANA name such as Europe/Paris)") from None


def check_period(period: str | None) -> str | None:
    if period is not None and period not in PERIODS:
        raise ConfigError(f"the period must be one of {', '.join(PERIODS)}")
    return period


def bounds(now_ms: int, period: str, tz: str | None) -> tuple[datetime, datetime]:
    """The calendar period containing ``now_ms``: (start, end) as aware UTC datetimes, start inclusive."""
    where = zone(tz)
    local = datetime.fromtimestamp(now_ms / 1000, timezone.utc).astimezone(where)
    day = local.date()
    if period == "day":
        first, after = day, day + timedelta(days=1)
    elif period == "week":
        first = day - timedelta(days=day.weekday())
        after = first + timedelta(days=7)
    elif period == "month":
        first = day.replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)
    else:
        raise ConfigError(f"the period must be one of {', '.join(PERIODS)}")
    return _midnight(first, where), _midnight(after, where)


def _midnight(d: date, where) -> datetime:
    # A zone whose midnight is skipped by a DST change starts the day at the first valid time after it.
    return datetime(d.year, d.month, d.day, tzinfo=where).astimezone(timezone.utc)


def iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_expiry(text: str) -> str:
    """``--expires``: a date (the key works through that day, UTC) or an ISO date-time -> the ledger's text."""
    try:
        if len(text) == 10:
            d = date.fromisoformat(text)
            when = datetime(d.year, d.month, d.day, tzinfo=timezone.utc) + timedelta(days=1)
        else:
            when = datetime.fromisoformat(text)
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
        return iso(when)
    except (ValueError, OverflowError):
        raise ConfigError(f"--expires: not a date (YYYY-MM-DD) or ISO date-time: {text[:64]!r}") from None
