"""The ledger: keys, credit, holds, instance leases and one usage row per request, on SQLite (a file, the
default) or PostgreSQL (a ``postgresql://`` URL, for several servers). ``core.py`` holds the rules of money,
``leases.py`` the crash rule; ``sqlite.py`` and ``postgres.py`` are the engines; ``schema.py`` the migrations."""

from __future__ import annotations

from ..money import MAX_BALANCE
from .core import Ledger, Reservation, digest
from .records import RequestRecord, bounded_model

__all__ = ["Ledger", "MAX_BALANCE", "Reservation", "RequestRecord", "bounded_model", "digest"]
