"""Translate a rule-free GBNF expression (what numeric.py and pattern.py emit) into a Python regex."""
import re

_TOK = re.compile(r'"((?:[^"\\]|\\.)*)"|(\[(?:[^\]\\]|\\.)*\])|(\{\d+(?:,\d*)?\})|([()|?*+])|(\s+)')
_ESC = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"'}


def gbnf_to_re(g: str) -> re.Pattern:
    out, i = "", 0
    while i < len(g):
        m = _TOK.match(g, i)
        assert m, g[i:]
        lit, cls, rep, op, _ = m.groups()
        if lit is not None:
            # a group: GBNF quantifiers apply to whole literals
            out += "(?:" + re.escape(re.sub(r"\\(.)", lambda e: _ESC[e.group(1)], lit)) + ")"
        else:
            out += cls or rep or op or ""
        i = m.end()
    return re.compile(out, re.S)
