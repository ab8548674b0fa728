"""The grammar engine (our GBNF matched by llguidance), through our Sampler, accepts exactly what our grammars
promise; generation under them always yields JSON that validates; broken grammars are refused. In-process, the tiny
model."""

from __future__ import annotations

import datetime
import json

import jsonschema
import pytest

from reverb.backends.llama import guidance
from reverb.errors import InvalidRequest
from reverb.grammar import GrammarSpec, response_format_grammar
from reverb.types import ResponseFormat, SamplingParams

FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value):  # jsonschema's own checker needs an optional package
    if isinstance(value, str):
        datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if "T" not in value or not (value.endswith("Z") or value[-6] in "+-"):
            raise ValueError(value)
    return True


def rf(schema) -> dict:
    return ResponseFormat("json_schema", schema, "t", True)


def g(schema) -> GrammarSpec:
    return response_format_grammar(rf(schema))


_VOCABS: dict = {}


def compiled(engine, spec: GrammarSpec) -> guidance.Grammar:
    """``spec`` compiled for ``engine``'s vocabulary, as the backend does at prepare."""
    if id(engine) not in _VOCABS:
        pieces, eog = engine.vocabulary()
        _VOCABS[id(engine)] = guidance.Vocabulary(pieces, eog, lambda t: engine.tokenize(t, special=False))
    return guidance.compile_grammar(spec, _VOCABS[id(engine)])


def accepts(engine, spec, text: str) -> bool:
    """Whether the grammar takes exactly ``text`` and then the end of generation (token by token)."""
    sampler = engine.sampler(SamplingParams(), 0, grammar=compiled(engine, spec))
    try:
        return all(sampler.follow(t) for t in engine.tokenize(text, special=False)) and \
            sampler.follow(_eos(engine))
    finally:
        sampler.close()


def _eos(engine) -> int:
    return next(t for t in range(engine.n_vocab) if engine.is_eog(t))


@pytest.mark.parametrize("schema,good,bad", [
    ({"type": "integer", "minimum": -5, "exclusiveMaximum": 120},
     ["-5", "0", "7", "119"], ["-6", "120", "1.5", "007", "-0"]),
    ({"type": "number", "exclusiveMinimum": 0, "maximum": 1}, ["1", "0.5", "0.001"],
     ["0", "0.0", "1.5", "-0.1", "1e0"]),
    ({"type": "number"}, ["0", "-1.25", "3e10", "1E-2"], ["01", "+1", ".5", "1.", "NaN"]),
    ({"type": "string", "minLength": 2, "maxLength": 3}, ['"ab"', '"abc"', '"\\n\\u00e9"', '"é€"'],
     ['"a"', '"abcd"', '"\\ud83d\\ude00"']),
    ({"type": "string"}, ['""', '"a\\"b"', '"tab\\tok"'], ['"raw\nnewline"', '"bad\\x"', '"\x01"', "'a'"]),
    ({"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$"}, ['"AB-123"'], ['"AB-12"', '"ab-123"', '"AB-1234"']),
    ({"type": "string", "pattern": "\\d"}, ['"x1y"', '"7"'], ['"xy"']),
    ({"type": "string", "pattern": '^a"b\\\\c$'}, ['"a\\"b\\\\c"'], ['"a"b\\c"']),
    ({"type": "string", "pattern": "^(cat|dog)s?$"}, ['"cat"', '"dogs"'], ['"cow"', '"catss"']),
    ({"type": "string", "format": "date"}, ['"2024-02-28"', '"1999-12-31"'],
     ['"2024-02-30"', '"2024-13-01"', '"24-01-01"']),
    ({"type": "string", "format": "date-time"}, ['"2024-05-01T10:20:30Z"', '"2024-05-01T10:20:30.5+02:00"'],
     ['"2024-05-01 10:20:30Z"', '"2024-05-01T10:20:30"']),
    ({"type": "string", "format": "uuid"}, ['"123e4567-e89b-12d3-a456-426614174000"'], ['"123e4567"']),
    ({"type": "string", "format": "ipv4"}, ['"192.168.0.1"', '"255.255.255.255"'], ['"256.1.1.1"', '"1.2.3"']),
    ({"type": "string", "format": "email"}, ['"a.b@c.io"'], ['"a@b"', '"@c.io"']),
    ({"type": ["string", "null"]}, ['"x"', "null"], ["1"]),
    ({"enum": ["a", 1, None, {"k": [1]}]}, ['"a"', "1", "null", '{"k": [1]}'], ['"b"', "2"]),
    ({"const": "x"}, ['"x"'], ['"y"']),
    ({"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2}, ["[1]", "[1, 2]"],
     ["[]", "[1, 2, 3]", '["a"]', "[ 1, 2 ]", "[1,2]"]),
    ({"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]}, ['["a", 1]'], ['["a"]', '[1, "a"]']),
    ({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "boolean"}}, "required": ["b"],
      "additionalProperties": False}, ['{"b": true}', '{"a": 1, "b": false}'],
     ['{}', '{"a": 1}', '{"b": true, "a": 1}', '{"b": true, "c": 1}', '{ "a":1,"b":true }', '{"a":1, "b": true}']),
    ({"type": "object", "additionalProperties": {"type": "integer"}}, ['{}', '{"x": 1, "y": 2}'], ['{"x": "1"}']),
    ({"type": "object"}, ['{}', '{"a": [1, {"b": null}]}'], ["[]"]),
    ({"anyOf": [{"type": "integer"}, {"type": "object", "properties": {"x": {"$ref": "#"}}}]},
     ["1", '{"x": {"x": 3}}', "{}"], ['{"x": "s"}']),
])
def test_accepts_exactly(engine, schema, good, bad):
    spec = g(schema)
    for text in good:
        assert accepts(engine, spec, text), text
    for text in bad:
        assert not accepts(engine, spec, text), text


def test_whitespace_has_one_spelling(engine):
    """json.dumps' spelling only: one space after ':' and ',', none inside brackets (so fast-forward decodes every
    separator and key name as forced tokens)."""
    spec = g({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "array"}},
              "required": ["a", "b"]})
    assert accepts(engine, spec, '{"a": 1, "b": [1, {"c": []}]}')
    for text in ('{ "a": 1, "b": []}', '{"a":1, "b": []}', '{"a": 1,"b": []}', '{"a": 1, "b": [ ]}',
                 '{"a": 1, "b": [1,2]}', '{\n"a": 1, "b": []}', '{"a": 1, "b": [] }'):
        assert not accepts(engine, spec, text), text


@pytest.mark.parametrize("text", ["", "root ::= (", 'start ::= "a"'])
def test_broken_grammars_are_refused(engine, text):
    with pytest.raises(InvalidRequest):  # "" would constrain nothing; the others do not parse or have no root
        compiled(engine, GrammarSpec(text))


SCHEMAS = {
    "person": {"type": "object", "additionalProperties": False, "required": ["name", "age", "email", "tags"],
               "properties": {"name": {"type": "string", "maxLength": 20},
                              "age": {"type": "integer", "minimum": 0, "maximum": 120},
                              "email": {"type": "string", "format": "email"},
                              "tags": {"type": "array", "items": {"enum": ["friend", "work", "family"]},
                                       "minItems": 1, "maxItems": 3}}},
    "order": {"type": "object", "required": ["customer", "items"], "additionalProperties": False,
              "properties": {"customer": {"$ref": "#/$defs/customer"},
                             "items": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
                                 "type": "object", "required": ["sku", "qty", "price"], "properties": {
                                     "sku": {"type": "string", "pattern": "^[A-Z]{3}-\\d{3}$"},
                                     "qty": {"type": "integer", "minimum": 1, "maximum": 10},
                                     "price": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000}}}}},
              "$defs": {"customer": {"type": "object", "required": ["name", "vip"], "properties": {
                  "name": {"type": "string", "maxLength": 30}, "vip": {"type": "boolean"}}}}},
    "unions": {"type": "object", "required": ["value", "note", "status", "version"], "properties": {
        "value": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 10}]},
        "note": {"type": ["string", "null"], "maxLength": 20}, "status": {"enum": ["ok", "fail"]},
        "version": {"const": 2}}},
    "formats": {"type": "object", "required": ["date", "when", "id", "ip"], "properties": {
        "date": {"type": "string", "format": "date"}, "when": {"type": "string", "format": "date-time"},
        "id": {"type": "string", "format": "uuid"}, "ip": {"type": "string", "format": "ipv4"}}},
    "tree": {"$ref": "#/definitions/node", "definitions": {"node": {
        "type": "object", "required": ["label"], "additionalProperties": False, "properties": {
            "label": {"type": "string", "maxLength": 12},
            "kids": {"type": "array", "maxItems": 2, "items": {"$ref": "#/definitions/node"}}}}}},
    "pets": {"type": "object", "required": ["pet"], "properties": {"pet": {"oneOf": [
        {"type": "object", "required": ["kind", "lives"], "properties": {"kind": {"const": "cat"},
                                                                         "lives": {"type": "integer", "maximum": 9}}},
        {"type": "object", "required": ["kind", "good"], "properties": {"kind": {"const": "dog"},
                                                                        "good": {"type": "boolean"}}}]}}},
    "optional": {"type": "object", "properties": {"a": {"type": "string", "maxLength": 10}, "b": {"type": "integer"},
                                                  "point": {"type": "array", "prefixItems": [
                                                      {"type": "number"}, {"type": "number"}]}}},
}


def generate(engine, schema: dict, name: str, temperature: float = 0.0, seed: int = 0, limit: int = 300) -> str:
    from reverb.models.templates import ChatTemplate
    from reverb.types import Message
    template = ChatTemplate(engine.chat_template(), bos_token=engine.bos_text, eos_token=engine.eos_text)
    # the grammar holds the answer to the schema: the schema itself in the prompt (100-300 tokens of prefill at
    # ~4 ms each) changed nothing the test asserts
    ask = f"Give an example {name} as JSON."
    segs = template.render([Message("system", "Reply with JSON only."), Message("user", ask)])
    prompt = [t for s in segs for t in engine.tokenize(s.text, special=not s.user)]
    sampler = engine.sampler(SamplingParams(temperature=temperature, seed=seed), seed,
                             grammar=compiled(engine, g(schema)))
    engine.seq_remove(0)
    engine.decode([(t, i, 0, i == len(prompt) - 1) for i, t in enumerate(prompt)])
    out, index = [], len(prompt) - 1
    try:
        for _ in range(limit):
            tok = sampler.sample(index)
            if tok < 0 or engine.is_eog(tok):
                return b"".join(engine.piece(t) for t in out).decode("utf-8")
            out.append(tok)
            engine.decode([(tok, len(prompt) + len(out) - 1, 0, True)])
            index = 0
    finally:
        sampler.close()
    return ""  # did not finish


@pytest.mark.parametrize("name,run", [(name, {}) for name in sorted(SCHEMAS) if name != "tree"]
                         + [("order", {"temperature": 0.9, "seed": 1}), ("pets", {"temperature": 0.9, "seed": 2})])
def test_generated_json_validates(engine, name, run):
    """(The recursive "tree" schema is left out: a weak model may nest until any limit; its grammar is checked in
    test_accepts_exactly.)"""
    schema = SCHEMAS[name]
    text = generate(engine, schema, name, **run)
    assert text, "did not finish"
    jsonschema.Draft202012Validator(schema, format_checker=FORMATS).validate(json.loads(text))


def test_a_complete_answer_with_its_end_token_banned_stops_cleanly(engine):
    """The grammar allows only the end token once the value is complete; with that token banned nothing is allowed,
    and the sampler says so (-1) instead of accepting a token llama.cpp would abort on."""
    spec = g({"enum": ["yes", "no"]})
    eog = tuple((t, -100.0) for t in range(engine.n_vocab) if engine.is_eog(t))
    sampler = engine.sampler(SamplingParams(temperature=0, logit_bias=eog), 0, grammar=compiled(engine, spec))
    prompt = engine.tokenize("<|im_start|>user\nYes or no?<|im_end|>\n<|im_start|>assistant\n", special=True)
    engine.seq_remove(0)
    engine.decode([(t, i, 0, i == len(prompt) - 1) for i, t in enumerate(prompt)])
    out, index = [], len(prompt) - 1
    try:
        for _ in range(10):
            tok = sampler.sample(index)
            if tok < 0:
                break
            out.append(tok)
            engine.decode([(tok, len(prompt) + len(out) - 1, 0, True)])
            index = 0
    finally:
        sampler.close()
    assert tok == -1 and json.loads(b"".join(engine.piece(t) for t in out)) in ("yes", "no")


def test_a_lexer_that_would_grow_without_bound_ends_the_answer(engine):
    """``.*a.{1000}`` needs a lexer state per position since the last ``a``, and each mask walks the vocabulary's
    multi-byte tokens through them: the matcher stops at its bound (grammar_too_costly), it does not grow on."""
    from reverb.errors import GrammarTooCostly
    m = compiled(engine, g({"type": "string", "pattern": "^.*a.{1000}$"})).matcher()
    with pytest.raises(GrammarTooCostly) as e:
        for _ in range(200):
            allowed = m.mask().nonzero()[0]
            tok = int(allowed[-1])  # the longest-id token allowed: a varied, deterministic walk
            m.accept(tok, engine.piece(tok))
    assert e.value.code == "grammar_too_costly" and e.value.param == "response_format"
