"""The batcher's wait queue, fair across keys: one queue per tenant (API key), the tenants taken in turn.

The turn goes to the waiting key served least recently (a key never served first), so a key's many jobs wait
behind other keys' first ones, whoever came first. The per-key caps on busy slots and on waiting jobs are the
batcher's (``Batcher.submit`` and ``Batcher.admit``).
"""

from __future__ import annotations

import collections
from typing import Iterator


MEMORY = 4096   # keys whose last start is remembered beyond those waiting


class FairQueue:
    """Waiting jobs per tenant, in arrival order within a tenant; tenants in turn order."""

    def __init__(self):
        self._by: dict[str, collections.deque] = {}
        self._n = 0
        self._served: dict[str, int] = {}   # tenant -> when its last job started (a counter)
        self._clock = 0

    def __len__(self) -> int:
        return self._n

    def __bool__(self) -> bool:
        return self._n > 0

    def __iter__(self) -> Iterator:
        """Every waiting job, tenant by tenant in turn order (a snapshot: the queue may change meanwhile)."""
        return iter([job for q in self._by.values() for job in q])

    def __contains__(self, job) -> bool:
        q = self._by.get(job.tenant)
        return q is not None and job in q

    def count(self, tenant: str) -> int:
        q = self._by.get(tenant)
        return len(q) if q else 0

    def push(self, job) -> None:
        self._by.setdefault(job.tenant, collections.deque()).append(job)
        self._n += 1

    def heads(self) -> list:
        """Each tenant's oldest waiting job, in turn order: least recently served first (ties: who came first)."""
        order = sorted(self._by, key=lambda t: self._served.get(t, -1))
        return [self._by[t][0] for t in order]

    def take(self, job) -> None:
        """Remove ``job`` (a head) because it starts: its tenant goes to the back of the turn order."""
        self.remove(job)
        self._clock += 1
        self._served.pop(job.tenant, None)
        self._served[job.tenant] = self._clock
        if len(self._served) > len(self._by) + MEMORY:   # forget the oldest keys that wait for nothing
            for tenant in list(self._served)[:MEMORY // 2]:
                if tenant not in self._by:
                    del self._served[tenant]

    def remove(self, job) -> None:
        """Remove ``job`` without changing whose turn it is (cancelled or timed out)."""
        q = self._by[job.tenant]
        q.remove(job)
        self._n -= 1
        if not q:
            del self._by[job.tenant]

    def pop_all(self) -> list:
        jobs = list(self)
        self._by.clear()
        self._n = 0
        return jobs
