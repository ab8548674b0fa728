"""Streaming detokenization: UTF-8 split across tokens, stop strings held back."""

from __future__ import annotations

from reverb.backends.llama.textstream import TextStream

from .conftest import is_utf8

TEXT = "Grüße 日本語 🙂 done"


def test_split_characters_are_held_back_with_the_real_tokenizer(engine):
    tokens = engine.tokenize(TEXT, special=False)
    pieces = [engine.piece(t) for t in tokens]
    assert not all(is_utf8(p) for p in pieces), "the text must really split characters across tokens"
    ts = TextStream()
    out = [ts.feed(p) for p in pieces]
    assert all("\ufffd" not in o for o in out)
    assert "".join(out) + ts.flush() == TEXT


def test_cut_off_character_is_dropped_not_replaced():
    ts = TextStream()
    assert ts.feed("ab".encode() + "🙂".encode()[:2]) == "ab"
    assert ts.flush() == ""


def test_stop_string_across_pieces():
    ts = TextStream(("STOP",))
    out = ts.feed(b"hello ST") + ts.feed(b"O") + ts.feed(b"P and more")
    assert out == "hello " and ts.stopped
    assert ts.feed(b"x") == "" and ts.flush() == ""


def test_partial_stop_is_released_when_it_is_not_a_stop():
    ts = TextStream(("STOP",))
    assert ts.feed(b"a ST") == "a "
    assert ts.feed(b"ART") == "START"
    assert not ts.stopped
