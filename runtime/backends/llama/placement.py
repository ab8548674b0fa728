"""Where a new job starts: which free slot it takes, and how much of its prompt is already computed.

A prompt's leading tokens may already be in the KV cache: in a free slot that last served the same conversation,
in another slot (copied over), or in host memory (``promptcache.PromptCache``). Only prefixes cached for the
same tenant (API key) count, unless sharing is on: a cross-key match would tell one key, by its speed, what
another key's prompts start with. A slot's content that is about to be overwritten goes to host memory first.

The slot: a free slot whose own cache holds a good part of the prompt keeps its conversation; otherwise a free
slot next to busy ones, because llama.cpp runs a step in one compute pass per run of consecutive sequence ids
(shapes.py) and each extra pass costs a pass over the weights; then the slot with the least cached content to
lose, then the lowest id.
"""

from __future__ import annotations

from ...errors import EngineError
from .promptcache import Entry, PromptCache, common_prefix

MIN_COPY = 128   # copying another slot's cells copies its whole KV stream: below this, recomputing is cheaper
MIN_SAVE = 32    # a prefix shorter than this is not worth host memory


class Placement:
    def __init__(self, engine, cache: PromptCache):
        self.engine = engine
        self.cache = cache

    def visible(self, slot, tenant: str) -> int:
        """How many of a slot's cached tokens a prompt of ``tenant`` may reuse."""
        return slot.reusable if slot.cached and self.cache.visible(slot.owner, tenant) else 0

    def place(self, prompt: list[int], tenant: str, slots: list, free: list, recompute: int = 1
              ) -> tuple[object, int]:
        """Pick a free slot for ``prompt`` and load the longest visible cached prefix into it, leaving at least the
        last ``recompute`` tokens to compute. Returns (slot, tokens already computed)."""
        limit = max(0, len(prompt) - recompute)
        own = {s: common_prefix(s.cached, prompt, min(self.visible(s, tenant), limit)) for s in free}
        busy = {s.seq for s in slots if s not in free}

        def key(s):  # keep a conversation; else pack next to busy slots; else overwrite the least; else lowest id
            keeps = own[s] if own[s] >= MIN_COPY or 2 * own[s] >= len(prompt) else 0
            return keeps, (s.seq - 1 in busy or s.seq + 1 in busy), -(s.reusable - own[s]), -s.seq

        slot = max(free, key=key)
        shared, source = own[slot], None
        for s in slots:
            if s is not slot and s.cached:
                n = common_prefix(s.cached, prompt, min(self.visible(s, tenant), limit))
                if n >= MIN_COPY and n > shared:
                    shared, source = n, s
        entry, n = self.cache.find(tenant, prompt, limit)
        if entry is not None and n > shared and n >= MIN_SAVE:  # a few shared tokens are cheaper to recompute
            shared, source = n, entry
        self._save_displaced(slot, shared if source is None else 0)
        if source is None:
            if not self.engine.seq_remove(slot.seq, shared, -1):
                self.engine.seq_remove(slot.seq)
                shared = 0
            slot.cached = slot.cached[:shared]
        elif not isinstance(source, Entry):
            self.engine.seq_copy_prefix(source.seq, slot.seq, shared)
            slot.cached = source.cached[:shared]
        else:
            # An entry this prompt uses whole moves into the slot (it comes back when the slot is handed over);
            # one it uses only the start of stays: the rest is another turn of that conversation.
            if shared >= source.usable:
                self.cache.take(source)
            try:
                self.engine.seq_load(slot.seq, source.data)
                self.engine.seq_remove(slot.seq, shared, -1)
                slot.cached = source.tokens[:shared]
            except EngineError:  # the sequence is empty now: compute the whole prompt
                shared, slot.cached = 0, []
        slot.reusable = shared
        slot.owner = tenant
        return slot, shared

    def _save_displaced(self, slot, kept: int) -> None:
        """Keep a slot's cached conversation in host memory before most of it is overwritten."""
        lost = slot.reusable - kept
        if lost < max(MIN_SAVE, slot.reusable // 2) or not slot.cached:
            return
        tokens = list(slot.cached)
        if not self.cache.would_keep(slot.owner, tokens, 0):
            return
        try:
            data = self.engine.seq_save(slot.seq)
        except EngineError:
            return
        self.cache.put(slot.owner, tokens, slot.reusable, data)
