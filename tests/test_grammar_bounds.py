"""The grammar matcher's bounds (backends/llama/guidance.py), over a byte-level vocabulary (one token per byte, no
model): a costly grammar is refused at compile naming its schema path, an answer over its CPU budget or its lexer
bounds ends with grammar_too_costly, the issue's attack grammars stay cheap per step, surrogates never pass, and the
lazy tool-call trigger and the parser agree on which openings start a call."""

from __future__ import annotations

import time

import pytest

from reverb.backends.llama import guidance
from reverb.errors import GrammarTooCostly, InvalidRequest
from reverb.grammar import parse_tools, response_format_grammar, tool_grammar
from reverb.grammar.tool_parser import parse_tool_calls
from reverb.types import ResponseFormat

EOS = 256


@pytest.fixture(scope="module")
def vocab() -> guidance.Vocabulary:
    pieces = [bytes([b]) for b in range(256)] + [b"\xff<eos>"]
    return guidance.Vocabulary(pieces, [EOS], lambda text: list(text.encode("utf-8")))


def schema(s) -> ResponseFormat:
    return ResponseFormat("json_schema", s, "t", True)


def feed(m: guidance.Matcher, data: bytes) -> bool:
    """Feed bytes as tokens; False at the first one the grammar refuses."""
    for b in data:
        if not m.allows(b):
            return False
        m.accept(b, bytes([b]))
    return True


def test_a_grammar_over_a_compile_bound_is_refused_naming_its_schema_path(vocab, monkeypatch):
    spec = response_format_grammar(schema({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 20}, "code": {"type": "string", "pattern": "^.*a.{1000}$"},
        "tag": {"enum": ["x" * 400 + str(i) for i in range(300)]}}}))
    guidance.compile_grammar(spec, vocab)  # within the real bounds
    monkeypatch.setitem(guidance.LIMITS, "initial_lexer_fuel", 2000)
    with pytest.raises(GrammarTooCostly) as e:
        guidance.compile_grammar(spec, vocab)
    assert e.value.param == "response_format.json_schema.schema.properties.code"
    assert e.value.code == "grammar_too_costly"


def test_broken_grammar_text_is_a_400_not_a_crash(vocab):
    from reverb.grammar import GrammarSpec
    for text in ("", "root ::= (", 'start ::= "a"', 'root ::= [a'):
        with pytest.raises(InvalidRequest):
            guidance.compile_grammar(GrammarSpec(text), vocab)


def test_an_answer_over_its_cpu_budget_ends_with_grammar_too_costly(vocab):
    spec = response_format_grammar(schema({"type": "array", "items": {"type": "integer"}}))
    m = guidance.compile_grammar(spec, vocab, budget_s=1e-9).matcher()
    with pytest.raises(GrammarTooCostly) as e:
        feed(m, b"[1, 2, 3]")
    assert "CPU time" in e.value.message and e.value.param == "response_format"


@pytest.mark.parametrize("s,forced", [
    ({"anyOf": [{"type": "array", "items": {"$ref": "#"}, "maxItems": 2},
                {"type": "array", "items": {"$ref": "#"}, "maxItems": 3}]}, b"[[[[[[[[[[[[[[[[[[[[[[[[[[["),
    ({"type": "string", "pattern": "^(a?){1000}$"}, b'"' + b"a" * 300),
])
def test_the_issue_s_ambiguous_grammars_cost_about_the_same_every_step(vocab, s, forced):
    """llama.cpp's sampler doubled its stacks per ``[`` (the 7th token took 5 s, then nothing): here each step's
    mask costs about what the first did, however far the attack pushes."""
    m = guidance.compile_grammar(response_format_grammar(schema(s)), vocab).matcher()
    times = []
    for b in forced:
        t0 = time.perf_counter()
        assert m.mask()[b]
        times.append(time.perf_counter() - t0)
        m.accept(b, bytes([b]))
    first, last = sorted(times[:5])[2], sorted(times[-5:])[2]  # medians: one slow step on a busy machine is noise
    assert last < 20 * first + 0.002, (first, last)


def test_string_characters_never_include_a_lone_surrogate(vocab):
    """UTF-8's encoding of U+D800 (ED A0 80) is not text: after ED only 80-9F may follow."""
    m = guidance.compile_grammar(response_format_grammar(schema({"type": "string"})), vocab).matcher()
    assert feed(m, b'"\xed')
    mask = m.mask()
    assert mask[0x80] and mask[0x9F] and not mask[0xA0] and not mask[0xBF]


WEATHER = {"type": "function", "function": {"name": "f", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}


@pytest.mark.parametrize("ws", ["", "\t", "\r\n", "\n\n\n", "  ", " \t\r\n", "\n\n\n\n\n", "\f", "\u00a0"])
@pytest.mark.parametrize("token", [1, 3, 100])
def test_the_lazy_grammar_and_the_parser_agree_on_openings(vocab, ws, token):
    """Written in tokens of ``token`` bytes: either the grammar (triggered) accepts the whole call and the parser
    parses it, or the text is not a call for either (never triggered, or refused once triggered)."""
    spec = tool_grammar(parse_tools([WEATHER], "auto"))
    text = f'Sure. <tool_call>{ws}{{"name": "f", "arguments": {{"a": 1}}}}\n</tool_call>'.encode()
    m = guidance.compile_grammar(spec, vocab).matcher()
    accepted = True
    for i in range(0, len(text), token):
        piece = text[i:i + token]
        if m.active and not feed(m, piece):
            accepted = False
            break
        if not m.active:
            m.accept(-1, piece)  # free text until the trigger (the token id is unused there)
    constrained_call = accepted and m.active
    parsed = bool(parse_tool_calls(text.decode(), {"f"})[1])
    assert constrained_call == parsed
    assert parsed == (ws in ("", "\t", "\r\n", "\n\n\n", "  ", " \t\r\n"))


def test_preparation_runs_on_a_bounded_pool_with_a_deadline(tmp_path, monkeypatch):
    """A request whose preparation outlives --prepare-timeout, or that finds the pool's queue full, is 503
    overloaded; the pool's threads are the only ones preparing (the event loop never tokenizes or compiles)."""
    import asyncio
    import threading

    from reverb.errors import OverloadedError
    from reverb.models import registry
    from reverb.request import Ask
    from reverb.settings import Settings
    from reverb.types import Message, SamplingParams

    from .fakes import fake_llama

    spec = registry.load(registry.Path(__file__).resolve().parent.parent / "models.toml").resolve("smollm2-135m")
    settings = Settings.build(environ={}, db=tmp_path / "l.db", prepare_workers=1, prepare_timeout=0.5, max_queue=0)
    backend = fake_llama(spec, settings)
    release, threads = threading.Event(), []
    real = backend._prepare

    def slow(ask, deadline):
        threads.append(threading.current_thread().name)
        release.wait(5)
        return real(ask, deadline)
    monkeypatch.setattr(backend, "_prepare", slow)
    ask = Ask(model=spec.name, messages=(Message("user", "hi"),), sampling=SamplingParams(max_tokens=2))

    async def go():
        first = asyncio.ensure_future(backend.prepare(ask))
        while not threads:                    # the first request holds the one preparation thread
            await asyncio.sleep(0.005)
        with pytest.raises(OverloadedError):  # one thread busy, none may wait
            await backend.prepare(ask)
        with pytest.raises(OverloadedError):  # the deadline passes while the thread is held
            await first
        release.set()
        return await backend.prepare(ask)
    try:
        prompt = asyncio.run(go())
    finally:
        release.set()
        backend.close()
    assert prompt.counts.n_tokens > 0 and all(name.startswith("reverb-prep-") for name in threads)
