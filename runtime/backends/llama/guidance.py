"""The only llguidance user: a request's GBNF grammar (from ``runtime/grammar/``) compiled and matched with bounded
work, in place of llama.cpp's grammar sampler.

llama.cpp's sampler keeps one stack per way a prefix can parse: an ambiguous grammar (``(a?){1000}``, two recursive
``anyOf`` array branches) doubles them per token on the thread every request shares, and ``x{0,1000}`` is expanded
into rules at build time (gigabytes for a 200 KB schema). llguidance parses with an Earley parser over a lazily built
lexer DFA, with a fuel limit on each step, on the number of lexer states and on the grammar's size: a grammar that
would cost more is refused when compiled, and a matcher that runs out of fuel while generating enters an error state
(``GrammarTooCostly``) instead of taking the thread. See docs/structured-output.md for the bounds and the figures.

Everything here may run on any thread; a ``Matcher`` belongs to one sequence.
"""

from __future__ import annotations

import codecs
import copy
import re
import time
from dataclasses import dataclass

import llguidance as lg
import llguidance.numpy as lgnp
import numpy as np
from llguidance import gbnf_to_lark as g2l

from ...errors import GrammarTooCostly, InvalidRequest
from .reasoning import OPENED, ThinkSplitter

# Per step (one token): ~14k lexer fuel/ms and ~20k Earley items/ms on this machine's cores (llguidance's figures),
# so a step is bounded to a few milliseconds whatever the grammar. Per compile: regex fuel (~50k/ms), lexer states
# (1-2 KB each: the memory of one matcher's DFA), grammar symbols.
LIMITS = dict(step_lexer_fuel=50_000, step_max_items=20_000, initial_lexer_fuel=1_000_000, max_lexer_states=20_000,
              max_grammar_size=200_000, max_items_in_row=1000, verbose_errors=False)
# Per answer (one choice): the grammar's total CPU time while generating (masks, checks, accepts); a server flag
# (--grammar-cpu-ms). A backstop: every step is bounded already, and an ordinary schema spends ~1 ms on a rejected
# token.
ANSWER_BUDGET_S = 10.0

# gbnf_to_lark writes GBNF's ``(x?){n}`` as ``x?{n,n}`` (a repetition counts as atomic, so it loses its group),
# which Lark reads as two quantifiers and refuses: a repeated repetition keeps its parentheses.
g2l.RepetitionNode.is_atomic = lambda self: False


class _Parser(g2l.GrammarParser):
    """llguidance's GBNF reader, keeping ``\\uHHHH`` whole: it strips leading zeros (``\\u2D``), which both its
    regexes and its string literals then refuse."""

    def _parse_char(self, pos):
        if pos.current() == "\\" and pos.peek(2)[1:] in ("u", "U"):
            width = 4 if pos.peek(2)[1:] == "u" else 8
            digits = pos.peek(width + 2)[2:]
            if len(digits) == width and all(c in "0123456789abcdefABCDEF" for c in digits):
                return pos.peek(width + 2), pos.advance(width + 2)
        return super()._parse_char(pos)


def to_lark(gbnf: str) -> str:
    """Our GBNF as llguidance's Lark dialect (rules that only spell characters become lexer regexes)."""
    rules = _Parser().parse(gbnf)
    g2l.resolve(rules)
    return "%llguidance {}\n\n" + "\n".join(str(r) for r in sorted(rules.values(), key=lambda r: r.order)) + "\n"


class Vocabulary:
    """A model's vocabulary as llguidance sees it: each token's bytes (control tokens marked unreachable from text),
    the end-of-generation tokens, and the model's tokenizer for text a grammar must be fed."""

    def __init__(self, pieces: list[bytes], eog: list[int], tokenize):
        wrapper = _Wrapper(pieces, eog[0] if eog else 0, tokenize)
        self.tokenizer = lg.LLTokenizer(lg.TokenizerWrapper(wrapper), n_vocab=len(pieces), eos_token=list(eog))
        self.n_vocab = len(pieces)
        self.pieces = pieces
        self.eog = frozenset(eog)
        self.tokenize = tokenize


class _Wrapper:
    bos_token_id = None

    def __init__(self, tokens, eos, tokenize):
        self.tokens, self.eos_token_id, self._tokenize = tokens, eos, tokenize

    def __call__(self, text):
        return self._tokenize(text.decode("utf-8", "replace") if isinstance(text, bytes) else text)


@dataclass(frozen=True)
class Grammar:
    """A compiled grammar: ``matcher()`` gives each choice its own state (a copy; the lexer is shared)."""
    template: object     # an LLMatcher in its start state
    vocab: Vocabulary
    param: str
    lazy: bool = False
    triggers: tuple = ()  # compiled trigger regexes (lazy grammars)
    paths: dict | None = None  # rule -> schema path
    budget_s: float = ANSWER_BUDGET_S
    think: str | None = None   # a thinking answer (reasoning.OPENED / LEADING): the triggers watch the answer only

    def refusal(self, message: str) -> Exception:
        return _refusal(message, self.param, self.paths or {}, compiling=False)

    def matcher(self) -> "Matcher":
        return Matcher(self.template.deep_copy(), self)


def compile_grammar(spec, vocab: Vocabulary, budget_s: float = ANSWER_BUDGET_S) -> Grammar:
    """Compile a GrammarSpec. Raises GrammarTooCostly when it is over a bound, InvalidRequest when llguidance
    refuses it otherwise (both name the spec's param)."""
    param = getattr(spec, "param", None) or "response_format"
    if not spec.grammar.strip():
        raise InvalidRequest("empty grammar", param=param)
    try:
        lark = to_lark(spec.grammar)
    except Exception as e:  # noqa: BLE001 (the converter raises plain Exceptions too, e.g. no root rule)
        raise InvalidRequest(f"the grammar for this request could not be read: {str(e)[:160]}", param=param) from None
    m = lg.LLMatcher(vocab.tokenizer, lark, log_level=0, limits=lg.LLParserLimits(**LIMITS))
    paths = dict(getattr(spec, "paths", ()))
    if m.is_error():
        raise _refusal(m.get_error(), param, paths, compiling=True)
    triggers = tuple(re.compile(p) for p in spec.trigger_patterns) if spec.lazy else ()
    return Grammar(m, vocab, param, spec.lazy, triggers, paths, budget_s)


def _refusal(message: str, param: str, paths: dict, compiling: bool) -> Exception:
    message = message.replace("<non-verbose/>", "").strip()
    low = message.lower()
    costly = any(w in low for w in ("limit", "fuel", "too many", "too large", "too big", "size", "exceeded"))
    if costly or not compiling:
        # Name the costly part by its schema path when llguidance names a rule we made for it
        part = _costly_part(message, paths)
        when = "compiling it" if compiling else "generating"
        first = message.splitlines()[0][:160] if message else "limit reached"
        return GrammarTooCostly(f"the grammar for this schema needs more work than a request may use; llguidance "
                                f"stopped {when} ({first})" + (f"; the costly part: {part}" if part else ""),
                                param=part or param)
    return InvalidRequest(f"the grammar for this request could not be built: {message[:160]}", param=param)


def _costly_part(message: str, paths: dict) -> str | None:
    """The schema path of the rule llguidance names in its error (Lark spells our rule root-a-kv as ROOT_A_KV);
    for a helper rule, the path of the longest rule its name extends."""
    for found in re.findall(r"\b([A-Z][A-Z0-9_]{2,})\b", message):
        rule = found.lower().replace("_", "-")
        while rule:
            if rule in paths:
                return paths[rule]
            rule = rule.rpartition("-")[0]
    return None


class Matcher:
    """One sequence's grammar state. ``allows`` / ``mask`` / ``accept`` raise GrammarTooCostly once the grammar has
    used up its per-step fuel, its lexer states or its answer's CPU time (``Grammar.budget_s``).

    A lazy grammar (tool calls with ``auto``) lets text through until a trigger matches what was written; from the
    trigger's start on, the grammar holds. A token that would complete a trigger with text the grammar refuses is
    refused itself, so a call's opening is never written without the grammar behind it. When the answer thinks first
    (``Grammar.think``), the triggers see only what follows the thought, as the tool-call parser does."""

    def __init__(self, m, grammar: Grammar):
        self._m, self.grammar = m, grammar
        self._bits = lgnp.allocate_token_bitmask(1, grammar.vocab.n_vocab)
        self.active = not grammar.lazy   # a lazy grammar starts at its trigger
        self._text = b""                 # lazy: what was generated so far, until the trigger
        self._refused: set[int] = set()  # lazy: tokens refused at this step
        self.spent = 0.0
        self._think = ThinkSplitter(grammar.think == OPENED) if grammar.lazy and grammar.think else None
        self._utf8 = codecs.getincrementaldecoder("utf-8")("ignore")

    def _check(self, t0: float) -> None:
        self.spent += time.perf_counter() - t0
        if self._m.is_error():
            raise self.grammar.refusal(self._m.get_error())
        if self.spent > self.grammar.budget_s:
            raise GrammarTooCostly(f"the grammar used more than {self.grammar.budget_s:g} s of CPU time for this "
                                   "answer", param=self.grammar.param)

    def allows(self, tok: int) -> bool:
        t0 = time.perf_counter()
        if not self.active:
            ok = tok not in self._refused and self._lazy_allows(tok)
            if not ok:
                self._refused.add(tok)
        elif tok in self.grammar.vocab.eog:  # validate_tokens never counts an end token; the mask does
            ok = self._m.is_accepting()
        else:
            ok = self._m.validate_tokens([tok]) == 1
        self._check(t0)
        return ok

    def mask(self) -> np.ndarray:
        """The allowed tokens, as a bool array over the vocabulary (before a lazy trigger: all but those refused
        at this step, each candidate still to be checked with ``allows``)."""
        if not self.active:
            out = np.ones(self.grammar.vocab.n_vocab, dtype=bool)
            out[list(self._refused)] = False
            return out
        t0 = time.perf_counter()
        lgnp.fill_next_token_bitmask(self._m, self._bits)
        self._check(t0)
        bits = np.unpackbits(self._bits[0].view(np.uint8), bitorder="little")
        return bits[:self.grammar.vocab.n_vocab].astype(bool)

    def forced(self) -> list[int]:
        """The tokens the grammar allows only one way from here (llguidance's fast-forward tokens; none before a
        lazy grammar's trigger). The sampler still samples each: this is a draft (draft.py)."""
        if not self.active:
            return []
        t0 = time.perf_counter()
        out = self._m.compute_ff_tokens()
        self._check(t0)
        return out

    @property
    def exact(self) -> bool:
        """Whether ``mask`` is exact (an allowed token need not be checked again)."""
        return self.active

    def accept(self, tok: int, piece: bytes) -> None:
        """Take a token ``allows`` allowed (before a lazy trigger: any text)."""
        t0 = time.perf_counter()
        self._refused.clear()
        if tok in self.grammar.vocab.eog:
            return  # the answer ends here
        if self.active:
            self._m.consume_token(tok)
        else:
            answer = self._answer(piece)
            hit = self._trigger(self._text + answer)
            if hit is not None:  # the grammar takes over from the trigger's start, fed what was written since
                self.active = True
                self._m.consume_tokens(self.grammar.vocab.tokenize(hit))
            else:
                self._text = (self._text + answer)[-256:]
        self._check(t0)

    def _lazy_allows(self, tok: int) -> bool:
        if tok in self.grammar.vocab.eog:
            return True
        hit = self._trigger(self._text + self._answer(self.grammar.vocab.pieces[tok], peek=True))
        return hit is None or self.grammar.template.deep_copy().consume_tokens(self.grammar.vocab.tokenize(hit))

    def _answer(self, piece: bytes, peek: bool = False) -> bytes:
        """What of ``piece`` is answer (all of it unless the answer thinks first). ``peek``: without taking it."""
        if self._think is None:
            return piece
        if peek:
            splitter, decoder = copy.copy(self._think), codecs.getincrementaldecoder("utf-8")("ignore")
            decoder.setstate(self._utf8.getstate())
        else:
            splitter, decoder = self._think, self._utf8
        return splitter.feed(decoder.decode(piece))[1].encode()

    def _trigger(self, data: bytes) -> str | None:
        """The text from a trigger's start, if ``data`` holds one (every earlier one already triggered)."""
        text = data.decode("utf-8", "ignore")
        for rx in self.grammar.triggers:
            hit = rx.search(text)
            if hit:
                return text[hit.start():]
        return None

    @property
    def done(self) -> bool:
        """The grammar is complete and allows nothing more (the answer must end)."""
        return self.active and self._m.is_stopped()
