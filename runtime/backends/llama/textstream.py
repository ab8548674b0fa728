"""Token bytes -> text a client may see: UTF-8 safe across token boundaries, stop strings held back.

A token may end in the middle of a multi-byte character; the incremental decoder keeps those bytes until the
character is complete, so no U+FFFD is ever sent for a split character. Text that could be the start of a stop
string is held back until it is known not to be one; a stop string itself is never sent.
"""

from __future__ import annotations

import codecs


class TextStream:
    def __init__(self, stop: tuple[str, ...] = ()):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        self._held = ""
        self.stopped = False
        self.matched: str | None = None     # the stop string that ended the text

    def feed(self, data: bytes) -> str:
        """Add a token's bytes; return the text that is now safe to send (maybe ''). Sets ``stopped``."""
        if self.stopped:
            return ""
        self._held += self._decoder.decode(data)
        if not self._stop:
            out, self._held = self._held, ""
            return out
        found = [(i, s) for s in self._stop if (i := self._held.find(s)) >= 0]
        if found:
            cut, self.matched = min(found, key=lambda f: f[0])
            out, self._held = self._held[:cut], ""
            self.stopped = True
            return out
        keep = self._partial_stop_suffix(self._held)
        out = self._held[: len(self._held) - keep]
        self._held = self._held[len(self._held) - keep:]
        return out

    def flush(self) -> str:
        """The rest at the end of generation. Bytes of a character cut off by max_tokens are dropped, not
        sent as U+FFFD: the client gets only whole characters."""
        if self.stopped:
            return ""
        out, self._held = self._held, ""
        self._decoder.reset()
        return out

    def _partial_stop_suffix(self, text: str) -> int:
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
