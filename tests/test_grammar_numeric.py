"""Integer/decimal range grammars, checked exhaustively by translating the GBNF fragment to a regex."""
import pytest
from .gbnf_re import gbnf_to_re as to_re

from reverb.grammar.numeric import int_range, number_range

BOUNDS = [None, -123, -100, -10, -1, 0, 1, 9, 10, 99, 100, 120, 1000]


@pytest.mark.parametrize("lo", BOUNDS)
@pytest.mark.parametrize("hi", BOUNDS)
def test_int_range_exhaustive(lo, hi):
    g = int_range(lo, hi)
    if lo is not None and hi is not None and lo > hi:
        assert g is None
        return
    r = to_re(g)
    for v in range(-1200, 1200):
        assert bool(r.fullmatch(str(v))) == ((lo is None or v >= lo) and (hi is None or v <= hi)), (lo, hi, v)
    assert not r.fullmatch("-0") and not r.fullmatch("007")


@pytest.mark.parametrize("lo,le,hi,he", [(0, False, 1, False), (0, True, 1, True), (-2, False, 3, True),
                                         (-5, True, None, False), (None, False, -1, True), (0.5, False, 2.5, False),
                                         (-1.5, True, 0, False)])
def test_number_range_sound(lo, le, hi, he):
    r = to_re(number_range(lo, le, hi, he))
    samples = [f"{v / 100:.2f}".rstrip("0").rstrip(".") for v in range(-700, 700)] + [str(v) for v in range(-7, 7)]
    hits = 0
    for s in set(samples):
        if r.fullmatch(s):
            hits += 1
            v = float(s)
            assert lo is None or (v > lo if le else v >= lo), (s, lo)
            assert hi is None or (v < hi if he else v <= hi), (s, hi)
    assert hits > 0


def test_number_range_exact_for_integer_bounds():
    r = to_re(number_range(0, False, 1, False))
    for s in ["0", "1", "0.5", "0.001", "0.999"]:
        assert r.fullmatch(s)
    for s in ["-0.5", "1.5", "1.0", "2"]:
        assert not r.fullmatch(s)
    assert number_range(0.2, False, 0.8, False) is None
