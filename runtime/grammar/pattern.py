"""Translate a JSON Schema ``pattern`` (a regex subset) into GBNF for the body of a JSON string.

The regex constrains the *decoded* string, while the grammar produces its JSON encoding, so every matched
character is emitted raw when JSON allows it, as an escape for '"', '\\', newline and tab, and other control
characters are never generated (tighter, never looser). Unanchored patterns get an implicit ".*" on the open
side (JSON Schema patterns are searches). Unsupported regex features raise InvalidRequest.
"""
from ..errors import InvalidRequest

MAX_PATTERN = 1000
MAX_REPEAT = 1000
MAXCP = 0x10FFFF
_ESC_SETS = {
    "d": [(0x30, 0x39)],
    "w": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
    "s": [(0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x2028, 0x2029), (0xFEFF, 0xFEFF)],
}
_ESC_CHARS = {"n": 10, "t": 9, "r": 13, "f": 12, "v": 11, "0": 0}
_DOT = [(0, 9), (11, 12), (14, 0x2027), (0x202A, MAXCP)]  # JS '.': anything but line terminators
# raw in a JSON string: not '"', '\\' or control characters (DEL is excluded like llama.cpp's own rule), and never a
# UTF-16 surrogate (U+D800-U+DFFF): no UTF-8 text holds one, and a grammar that admits them would let the answer
# carry bytes no client can decode
_RAW_OK = [(0x20, 0x21), (0x23, 0x5B), (0x5D, 0x7E), (0x80, 0xD7FF), (0xE000, MAXCP)]
_ESCAPED = {0x22: r'"\\\""', 0x5C: r'"\\\\"', 0x0A: r'"\\n"', 0x09: r'"\\t"'}


def _norm(ranges):
    out = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _negate(ranges):
    out, prev = [], 0
    for lo, hi in _norm(ranges):
        if lo > prev:
            out.append((prev, lo - 1))
        prev = hi + 1
    return out + ([(prev, MAXCP)] if prev <= MAXCP else [])


def _intersect(a, b):
    out = []
    for lo1, hi1 in _norm(a):
        for lo2, hi2 in _norm(b):
            if max(lo1, lo2) <= min(hi1, hi2):
                out.append((max(lo1, lo2), min(hi1, hi2)))
    return out


def _cp(c: int) -> str:
    return chr(c) if chr(c).isascii() and chr(c).isalnum() else (f"\\u{c:04X}" if c <= 0xFFFF else f"\\U{c:08X}")


def charset_gbnf(ranges) -> str:
    """GBNF producing the JSON encoding of one character from ``ranges`` (codepoint intervals)."""
    ranges = _norm(ranges)
    raw = _intersect(ranges, _RAW_OK)
    alts = ["[" + "".join(_cp(lo) if lo == hi else f"{_cp(lo)}-{_cp(hi)}" for lo, hi in raw) + "]"] if raw else []
    alts += [lit for c, lit in _ESCAPED.items() if _intersect(ranges, [(c, c)])]
    if not alts:
        raise ValueError("empty")
    return alts[0] if len(alts) == 1 else "(" + " | ".join(alts) + ")"


class _Parser:
    def __init__(self, src: str, param: str):
        self.s, self.i, self.param = src, 0, param

    def fail(self, msg):
        raise InvalidRequest(f"unsupported regular expression in 'pattern': {msg}", param=self.param)

    def peek(self):
        return self.s[self.i] if self.i < len(self.s) else None

    def take(self):
        c = self.peek()
        self.i += 1
        return c

    def alt(self) -> str:
        seqs = [self.seq()]
        while self.peek() == "|":
            self.i += 1
            seqs.append(self.seq())
        return seqs[0] if len(seqs) == 1 else "(" + " | ".join(s or '""' for s in seqs) + ")"

    def seq(self) -> str:
        items = []
        while self.peek() not in (None, "|", ")"):
            if self.peek() in "^$":
                self.fail("anchors are only supported at the start and end")
            items.append(self.quantified(self.atom()))
        return " ".join(items)

    def atom(self) -> str:
        c = self.take()
        if c == "(":
            if self.s.startswith("?:", self.i):
                self.i += 2
            elif self.peek() == "?":
                self.fail("lookaround and named groups")
            inner = self.alt()
            if self.take() != ")":
                self.fail("unbalanced parenthesis")
            return f"({inner or chr(34) * 2})"
        if c == "[":
            return self.charset(self.cls())
        if c == ".":
            return self.charset(_DOT)
        if c == "\\":
            return self.charset(self.escape(in_class=False))
        if c in "*+?{}])":
            self.fail(f"unexpected {c!r}")
        return self.charset([(ord(c), ord(c))])

    def charset(self, ranges) -> str:
        try:
            return charset_gbnf(ranges)
        except ValueError:
            self.fail("a character class that matches no character JSON strings can carry")

    def escape(self, in_class: bool):
        c = self.take()
        if c is None:
            self.fail("trailing backslash")
        if c.lower() in _ESC_SETS:
            r = _ESC_SETS[c.lower()]
            return _negate(r) if c.isupper() else r
        if c in _ESC_CHARS:
            return [(_ESC_CHARS[c],) * 2]
        if c in "xu":
            n = 2 if c == "x" else 4
            h = self.s[self.i:self.i + n]
            if len(h) != n or any(ch not in "0123456789abcdefABCDEF" for ch in h):
                self.fail(f"bad \\{c} escape")
            self.i += n
            return [(int(h, 16),) * 2]
        if c == "b" and in_class:
            return [(8, 8)]
        if c.isalnum():
            self.fail(f"escape \\{c}")
        return [(ord(c), ord(c))]

    def cls(self):
        neg = self.peek() == "^"
        self.i += neg
        ranges, first = [], True
        while True:
            c = self.take()
            if c is None:
                self.fail("unterminated character class")
            if c == "]" and not first:
                break
            first = False
            item = self.escape(in_class=True) if c == "\\" else [(ord(c), ord(c))]
            if self.peek() == "-" and self.i + 1 < len(self.s) and self.s[self.i + 1] != "]" and len(item) == 1 \
                    and item[0][0] == item[0][1]:
                self.i += 1
                d = self.take()
                end = self.escape(in_class=True) if d == "\\" else [(ord(d), ord(d))]
                if len(end) != 1 or end[0][0] != end[0][1] or end[0][0] < item[0][0]:
                    self.fail("bad character range")
                item = [(item[0][0], end[0][0])]
            ranges += item
        return _negate(ranges) if neg else ranges

    def quantified(self, atom: str) -> str:
        c = self.peek()
        if c in ("*", "+", "?"):
            self.i += 1
            q = c
        elif c == "{":
            j = self.s.find("}", self.i)
            body = self.s[self.i + 1:j] if j > 0 else ""
            parts = body.split(",")
            bad_max = len(parts) == 2 and parts[1] and not parts[1].isdigit()
            if j < 0 or len(parts) > 2 or not parts[0].isdigit() or bad_max:
                self.fail("bad {m,n} quantifier")
            lo = int(parts[0])
            hi = lo if len(parts) == 1 else (int(parts[1]) if parts[1] else None)
            if max(lo, hi or 0) > MAX_REPEAT or (hi is not None and hi < lo):
                self.fail(f"repetition bounds must be ordered and at most {MAX_REPEAT}")
            self.i = j + 1
            q = f"{{{lo},{'' if hi is None else hi}}}" if hi != lo else f"{{{lo}}}"
        else:
            return atom
        if self.peek() == "?":  # lazy quantifiers match the same language
            self.i += 1
        if self.peek() in ("*", "+", "?", "{"):
            self.fail("nested quantifier")
        return f"({atom}){q}" if " " in atom and not atom.startswith("(") else atom + q


def pattern_to_gbnf(pattern, param: str) -> str:
    """GBNF for a JSON string (quotes included) whose decoded value matches ``pattern``."""
    if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN:
        raise InvalidRequest(f"'pattern' must be a string of at most {MAX_PATTERN} characters", param=param)
    start = pattern.startswith("^")
    # a trailing '$' is an anchor unless an odd number of backslashes escapes it
    end = pattern.endswith("$") and (len(pattern) - 1 - len(pattern[:-1].rstrip("\\"))) % 2 == 0
    p = _Parser(pattern[start:len(pattern) - end], param)
    body = p.alt()
    if p.i != len(p.s):
        p.fail("unbalanced parenthesis")
    anything = charset_gbnf(_DOT) + "*"
    parts = ([] if start else [anything]) + ([f"({body})"] if body else []) + ([] if end else [anything])
    return r'"\"" ' + " ".join(parts) + r' "\""'
