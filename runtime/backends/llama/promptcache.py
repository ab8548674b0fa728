"""Prompt prefixes kept in host memory beyond the slots (what llama-server's ``--cache-ram`` does).

When a slot is handed to another conversation, the KV cells it held are saved here (llama.cpp's per-sequence
state), so the next turn of that chat is restored from memory instead of recomputed. Least recently used entries
go first when the byte budget is reached. Each entry belongs to one tenant (API key) and is found only by that
tenant's prompts unless the cache is shared: a cross-key match would let one key time another key's prompts.
Thread-free: the batcher's owner thread is the only user.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass


@dataclass(eq=False)
class Entry:
    tenant: str
    tokens: list[int]      # the tokens whose KV cells ``data`` holds, in position order
    usable: int            # how many leading tokens a later prompt may reuse (see Slot.reusable)
    data: bytearray        # Engine.seq_save

    @property
    def size(self) -> int:
        return len(self.data)


class PromptCache:
    def __init__(self, budget_bytes: int, share: bool = False):
        self.budget = max(0, int(budget_bytes))
        self.share = share
        self._entries: collections.OrderedDict[int, Entry] = collections.OrderedDict()  # oldest first
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def visible(self, entry_tenant: str, tenant: str) -> bool:
        return self.share or entry_tenant == tenant

    def would_keep(self, tenant: str, tokens: list[int], size: int) -> bool:
        """Whether ``put`` would store this: it fits the budget and no entry of the tenant already holds it."""
        if not self.budget or size > self.budget:
            return False
        return not any(e.tenant == tenant and _starts_with(e.tokens, tokens) for e in self._entries.values())

    def put(self, tenant: str, tokens: list[int], usable: int, data: bytearray) -> bool:
        """Keep a prefix. Entries of the same tenant that it extends are dropped (it holds them), then the least
        recently used ones until it fits. Returns False when it was not kept."""
        if not self.would_keep(tenant, tokens, len(data)):
            return False
        for key, e in list(self._entries.items()):
            if e.tenant == tenant and _starts_with(tokens, e.tokens):
                self._drop(key)
        while self._entries and self.bytes + len(data) > self.budget:
            self._drop(next(iter(self._entries)))
        entry = Entry(tenant, list(tokens), usable, data)
        self._entries[id(entry)] = entry
        self.bytes += entry.size
        return True

    def find(self, tenant: str, prompt: list[int], limit: int) -> tuple[Entry | None, int]:
        """The visible entry whose usable prefix shares the most tokens with ``prompt`` (at most ``limit``)."""
        best, best_n = None, 0
        for e in reversed(self._entries.values()):  # most recent first, so ties go to the newest
            if not self.visible(e.tenant, tenant):
                continue
            n = min(common_prefix(e.tokens, prompt, e.usable), limit)
            if n > best_n:
                best, best_n = e, n
        return best, best_n

    def take(self, entry: Entry) -> Entry:
        """Remove an entry to load it into a slot (the slot holds it from then on; it comes back here when that
        slot is handed over again)."""
        self._drop(id(entry))
        return entry

    def _drop(self, key: int) -> None:
        e = self._entries.pop(key)
        self.bytes -= e.size


def common_prefix(a: list[int], b: list[int], limit: int | None = None) -> int:
    """How many leading tokens ``a`` and ``b`` share (at most ``limit``)."""
    n = min(len(a), len(b)) if limit is None else min(len(a), len(b), limit)
    i = 0
    while i + 64 <= n and a[i:i + 64] == b[i:i + 64]:  # prompts share long system prompts: compare in blocks
        i += 64
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _starts_with(tokens: list[int], prefix: list[int]) -> bool:
    return len(prefix) <= len(tokens) and tokens[:len(prefix)] == prefix
