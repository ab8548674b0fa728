"""pattern -> GBNF, checked against Python's re on every short string over a small alphabet."""
import itertools
import json
import re

import pytest
from .gbnf_re import gbnf_to_re

from reverb.grammar.pattern import pattern_to_gbnf

ALPHABET = 'aZ1-". \\\n'
STRINGS = ["".join(p) for n in range(5) for p in itertools.product(ALPHABET, repeat=n)]


@pytest.mark.parametrize("pattern", [
    "^a$", "^[a-z]+$", "^[^a]*$", "^\\d{1,2}-\\w?$", "^(a|Z1)*$", '^"\\\\?$', "^.+$", "^[\\s\\S]{2}$",
    "^(?:aa|Z)+?$", "^a{2,}$", "^[.-]{0,3}$", "1", "^a", "Z$", "^$", "^\\.\\-$", "^[^\\d\\s]{3}$",
])
def test_pattern_sound_and_complete(pattern):
    g = gbnf_to_re(pattern_to_gbnf(pattern, "p"))
    py = re.compile(pattern)
    for s in STRINGS:
        encoded = json.dumps(s, ensure_ascii=False)
        if g.fullmatch(encoded):  # everything the grammar allows matches the pattern (sound)
            assert py.search(s), (pattern, s)
        elif py.search(s) and "\n" not in s:  # and it allows every match (complete) - but for
            # unanchored patterns the implicit ".*" excludes newlines; tighter is fine
            assert not (pattern.startswith("^") and pattern.endswith("$")), (pattern, s)


@pytest.mark.parametrize("pattern", ["^[^a]$", "^.$", "^\\W$", "^[\\s\\S]$", "^[\\u0080-\\uffff]$"])
def test_character_classes_exclude_lone_surrogates(pattern):
    """No class reaches U+D800-U+DFFF: no UTF-8 text holds a lone surrogate, so no answer may."""
    g = gbnf_to_re(pattern_to_gbnf(pattern, "p"))
    for c in ("\ud7ff", "\ue000"):
        assert g.fullmatch(json.dumps(c, ensure_ascii=False)), hex(ord(c))
    for c in ("\ud800", "\udbff", "\udc00", "\udfff"):
        assert not g.fullmatch(json.dumps(c, ensure_ascii=False)), hex(ord(c))
