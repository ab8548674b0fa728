"""response_format -> grammar (its shape is checked where the request is read: tests/test_wire.py)."""
import pytest

from reverb.errors import InvalidRequest
from reverb.grammar import response_format_grammar
from reverb.grammar.pattern import pattern_to_gbnf
from reverb.types import ResponseFormat


def test_text_and_absent():
    assert response_format_grammar(None) is None


def test_json_object():
    g = response_format_grammar(ResponseFormat("json_object"))
    assert g.grammar.startswith("root ::= object\n") and not g.lazy and g.root == "root"


def test_json_schema_without_schema_is_any_object():
    g = response_format_grammar(ResponseFormat("json_schema", name="x"))
    assert g.grammar.startswith("root ::= object\n")


def test_strict_false_is_enforced_too():
    s = {"type": "object", "properties": {"a": {"type": "integer", "multipleOf": 2}}}
    for strict in (True, False):
        with pytest.raises(InvalidRequest):
            response_format_grammar(ResponseFormat("json_schema", s, "n", strict))


def test_object_declared_properties_only_in_order():
    s = {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "integer"}}, "required": ["a"]}
    g = response_format_grammar(ResponseFormat("json_schema", s, "n")).grammar
    root = next(line for line in g.splitlines() if line.startswith("root-1 ::="))
    assert root.index("root-b-kv") < root.index("root-a-kv")


def test_rule_names_do_not_collide_with_refs():
    # the shipped llama_cpp converter reuses a property's rule for a same-named $def; we must not
    s = {"type": "object", "properties": {"string": {"type": "integer"}, "item": {"$ref": "#/$defs/item"}},
         "$defs": {"item": {"type": "boolean"}}, "required": ["string", "item"]}
    g = response_format_grammar(ResponseFormat("json_schema", s, "n")).grammar
    rules = dict(line.split(" ::= ", 1) for line in g.splitlines())
    assert len(rules) == len(g.splitlines())  # no duplicate rule names
    assert rules["root-string-kv"].endswith(" integer")
    item = rules["root-item-kv"].split()[-1]
    assert rules[rules[item]] if rules[item] in rules else rules[item] == "boolean"


def test_pattern_translation():
    assert pattern_to_gbnf("^a$", "p") == r'"\"" ([a]) "\""'
    g = pattern_to_gbnf('^["\\\\]$', "p")  # quote and backslash must be emitted escaped
    assert r'"\\\""' in g and r'"\\\\"' in g
    for bad in ["^a(?=b)$", "^\\1$", "^a{2,1}$", "^(a$", "^a**$", "^\\bword$"]:
        with pytest.raises(InvalidRequest) as e:
            pattern_to_gbnf(bad, "x.pattern")
        assert e.value.param == "x.pattern"
