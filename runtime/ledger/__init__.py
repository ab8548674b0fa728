"""The ledger: keys, credit, holds and one usage row per request (SQLite, ``sqlite.py``)."""

from __future__ import annotations

from .records import RequestRecord
from .sqlite import Ledger, digest

__all__ = ["Ledger", "RequestRecord", "digest"]
